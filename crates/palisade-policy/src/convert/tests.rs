//! Conversion tests. The one that matters: converted objects, loaded back through the
//! loader in place of the originals, give every flow the verdict the originals give
//! (examples and generated clusters); then one test per refusal.

use std::net::IpAddr;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

use super::{convert, Conversion, Target};
use crate::manifest;
use crate::model::{CalicoPort, Cluster, PortMatch};
use crate::verdict::{evaluate, Flow, Peer};

/// Loads manifests; every object must load.
fn cluster(texts: &[&str]) -> Cluster {
    let inputs: Vec<(String, String)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("t{i}.yaml"), t.to_string()))
        .collect();
    let l = manifest::load(&inputs);
    assert!(l.errors.is_empty(), "{:#?}", l.errors);
    l.cluster
}

/// `original` with the converted objects replaced by their conversions, loaded back
/// from the YAML `convert` writes.
fn replaced(original: &Cluster, conv: &Conversion, target: Target) -> Cluster {
    let mut c = original.clone();
    if conv.converted.is_empty() {
        assert_eq!(conv.yaml(), "");
        return c;
    }
    let loaded = manifest::load(&[("converted.yaml".to_string(), conv.yaml())]);
    assert!(
        loaded.errors.is_empty() && loaded.warnings.is_empty(),
        "converted output must load cleanly: {:#?} {:#?}\n{}",
        loaded.errors,
        loaded.warnings,
        conv.yaml()
    );
    let mut count = 0;
    for done in &conv.converted {
        let removed = match target {
            Target::Calico => {
                let key = done.from.trim_start_matches("NetworkPolicy ").to_string();
                c.network_policies.remove(&key).is_some()
            }
            _ => {
                let key = c
                    .calico_policies
                    .values()
                    .find(|p| crate::verdict::calico::display_name(p) == done.from)
                    .map(|p| p.key());
                key.is_some_and(|k| c.calico_policies.remove(&k).is_some())
            }
        };
        assert!(removed, "{} is in the input", done.from);
        count += 1;
    }
    let new = loaded.cluster;
    assert_eq!(
        new.network_policies.len() + new.calico_policies.len(),
        count,
        "one object per conversion"
    );
    c.extend(new);
    c
}

/// Ports worth probing: the usual ones and every range edge of both clusters.
fn probe_ports(cs: &[&Cluster]) -> Vec<u16> {
    let mut out = vec![
        0, 1, 52, 53, 54, 79, 80, 81, 90, 91, 443, 6443, 8080, 9000, 9090, 65535,
    ];
    for c in cs {
        for np in c.network_policies.values() {
            for r in np.ingress.iter().chain(&np.egress).flatten() {
                for p in r.ports.iter().flatten() {
                    if let PortMatch::Range { port, end_port, .. } = p {
                        out.extend([*port, *end_port, port - 1, end_port.saturating_add(1)]);
                    }
                }
            }
        }
        for p in c.calico_policies.values() {
            for r in p.ingress.iter().chain(&p.egress).flatten() {
                for port in r.ports.iter().chain(&r.not_ports) {
                    if let CalicoPort::Range(lo, hi) = port {
                        out.extend([*lo, *hi, lo.saturating_sub(1), hi.saturating_add(1)]);
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Addresses worth probing: pods, nodes, endpoints, network sets and ipBlock edges.
fn probe_addresses(c: &Cluster) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
        "10.0.0.200",
        "10.0.1.7",
        "10.9.9.9",
        "10.96.0.1",
        "169.254.169.254",
        "172.18.0.2",
        "192.168.1.1",
        "192.168.1.200",
        "8.8.8.8",
        "fd00::1",
        "fd00::3",
        "fd00::99",
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
    for np in c.network_policies.values() {
        for r in np.ingress.iter().chain(&np.egress).flatten() {
            for peer in r.peers.iter().flatten() {
                if let crate::model::NetworkPolicyPeer::IpBlock(b) = peer {
                    for n in std::iter::once(&b.cidr).chain(&b.except) {
                        out.extend([n.network(), n.broadcast()]);
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The first flow whose verdict (whole and per side) differs between `a` and `b`.
fn first_difference(a: &Cluster, b: &Cluster) -> Option<String> {
    let ports = probe_ports(&[a, b]);
    let addrs = probe_addresses(a);
    let verdict = |c: &Cluster, f: &Flow| {
        let d = evaluate(c, f);
        (
            d.allowed,
            d.egress.map(|s| s.allowed),
            d.ingress.map(|s| s.allowed),
        )
    };
    let mut flows = Vec::new();
    for src in a.pods.keys() {
        for dst in a.pods.keys() {
            flows.push((Peer::Pod(src.clone()), Peer::Pod(dst.clone())));
        }
        for ip in &addrs {
            flows.push((Peer::Pod(src.clone()), Peer::Ip(*ip)));
            flows.push((Peer::Ip(*ip), Peer::Pod(src.clone())));
        }
    }
    for (src, dst) in flows {
        for proto in [6u8, 17, 132, 1] {
            for &port in &ports {
                let f = Flow::new(src.clone(), dst.clone(), proto, port);
                let (va, vb) = (verdict(a, &f), verdict(b, &f));
                if va != vb {
                    return Some(format!(
                        "{src:?} -> {dst:?} proto {proto} port {port}: original {va:?}, converted {vb:?}"
                    ));
                }
            }
        }
    }
    None
}

/// Converts `c` to `target`, checks that verdicts are kept, returns the conversion.
fn keeps_verdicts(c: &Cluster, target: Target) -> Conversion {
    let conv = convert(c, target);
    let after = replaced(c, &conv, target);
    if let Some(d) = first_difference(c, &after) {
        panic!("{target:?}: {d}\nconverted:\n{}", conv.yaml());
    }
    conv
}

macro_rules! example {
    ($($f:literal),+) => {
        cluster(&[$(include_str!(concat!("../../../../examples/", $f))),+])
    };
}

#[test]
fn convert_every_example_keeps_every_verdict() {
    let examples = [
        (
            "aws-walkthrough",
            example!(
                "aws-walkthrough/00-cluster.yaml",
                "aws-walkthrough/01-deny-all-ingress.yaml",
                "aws-walkthrough/02-allow-ingress-from-samens-client-one.yaml",
                "aws-walkthrough/03-allow-ingress-from-another-ns.yaml",
                "aws-walkthrough/04-deny-all-egress-client-one.yaml",
                "aws-walkthrough/05-allow-egress-to-demo-app.yaml"
            ),
        ),
        (
            "calico-imds-api",
            example!(
                "calico-imds-api/00-cluster.yaml",
                "calico-imds-api/01-deny-k8s-api-and-imds.yaml"
            ),
        ),
        (
            "deny-metadata",
            example!(
                "deny-metadata/00-cluster.yaml",
                "deny-metadata/01-deny-metadata.yaml"
            ),
        ),
        (
            "dual-stack",
            example!("dual-stack/00-cluster.yaml", "dual-stack/01-policies.yaml"),
        ),
        (
            "multi-team",
            example!(
                "multi-team/00-cluster.yaml",
                "multi-team/01-team-a.yaml",
                "multi-team/02-team-b.yaml"
            ),
        ),
        (
            "services",
            example!("services/00-cluster.yaml", "services/01-web-ingress.yaml"),
        ),
    ];
    for (name, c) in &examples {
        let to_calico = keeps_verdicts(c, Target::Calico);
        // Every NetworkPolicy of the examples converts (none is refused).
        assert_eq!(
            to_calico.converted.len(),
            c.network_policies.len(),
            "{name}: {:#?}",
            to_calico.refused
        );
        assert_eq!(to_calico.refused.len(), c.cluster_policies.len(), "{name}");
        // And back: the Calico policies converted from NetworkPolicies convert back,
        // with the same verdicts again.
        let calico = replaced(c, &to_calico, Target::Calico);
        let back = keeps_verdicts(&calico, Target::NetworkPolicy);
        assert_eq!(
            back.converted.len(),
            to_calico.converted.len(),
            "{name}: {:#?}",
            back.refused
        );
        keeps_verdicts(c, Target::NetworkPolicy);
        keeps_verdicts(c, Target::ClusterNetworkPolicy);
    }
    // The seed-002 policy (Deny rules, a Service) is refused, naming the first Deny.
    let (_, imds) = &examples[1];
    let r = convert(imds, Target::NetworkPolicy);
    assert!(r.converted.is_empty());
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.refused[0].field, "spec.egress[0].action");
}

#[test]
fn convert_generated_clusters_keeps_every_verdict() {
    let cases: u32 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut runner = TestRunner::deterministic();
    let strategy = crate::compile::tests::arb_cluster();
    let (mut to_calico, mut to_np, mut refused_np) = (0, 0, 0);
    for _ in 0..cases {
        let c = strategy.new_tree(&mut runner).unwrap().current();
        let a = keeps_verdicts(&c, Target::Calico);
        to_calico += a.converted.len();
        let b = keeps_verdicts(&c, Target::NetworkPolicy);
        to_np += b.converted.len();
        refused_np += b.refused.len();
        // A round trip through Calico comes back to NetworkPolicies meaning the same.
        let calico = replaced(&c, &a, Target::Calico);
        keeps_verdicts(&calico, Target::NetworkPolicy);
        // Most random Calico NetworkPolicies have a Deny: make theirs Allow (the
        // GlobalNetworkPolicies keep their Deny and Pass rules, which decide where a
        // policy may move) so that selectors, nets and orders are exercised too.
        let mut allow = c.clone();
        for p in allow.calico_policies.values_mut() {
            if p.namespace.is_some() {
                for r in p.ingress.iter_mut().chain(p.egress.iter_mut()).flatten() {
                    r.action = crate::model::CalicoAction::Allow;
                }
            }
        }
        let d = keeps_verdicts(&allow, Target::NetworkPolicy);
        to_np += d.converted.len();
        refused_np += d.refused.len();
    }
    // Not vacuous: both directions convert some objects and refuse others.
    eprintln!("{cases} clusters: {to_calico} NetworkPolicies to Calico, {to_np} Calico policies to NetworkPolicies, {refused_np} refused");
    assert!(
        to_calico > 0 && to_np > 0 && refused_np > 0,
        "{to_calico} {to_np} {refused_np}"
    );
}

// ---------------------------------------------------------------------------------------
// What the output says.
// ---------------------------------------------------------------------------------------

const NS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
";

#[test]
fn convert_to_calico_writes_order_1000_notnets_one_rule_per_peer_ranges_and_named_ports() {
    let c = cluster(&[
        NS,
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {port: 8080, endPort: 8090}
    - {port: http, protocol: TCP}
    - {protocol: UDP}
",
    ]);
    let conv = convert(&c, Target::Calico);
    assert!(conv.refused.is_empty(), "{:#?}", conv.refused);
    let doc = &conv.converted[0].document;
    assert_eq!(
        conv.converted[0].to,
        "NetworkPolicy.projectcalico.org shop/web"
    );
    let spec = &doc["spec"];
    assert_eq!(spec["order"], 1000);
    assert_eq!(
        spec["selector"],
        "projectcalico.org/orchestrator == 'k8s' && app == 'web'"
    );
    assert_eq!(spec["types"], serde_json::json!(["Ingress"]));
    let rules = spec["ingress"].as_array().unwrap();
    // 2 peers x 2 protocols.
    assert_eq!(rules.len(), 4);
    assert_eq!(rules[0]["source"]["namespaceSelector"], "all()");
    assert_eq!(
        rules[0]["source"]["selector"],
        "projectcalico.org/orchestrator == 'k8s'"
    );
    assert_eq!(rules[0]["protocol"], "TCP");
    assert_eq!(
        rules[0]["destination"]["ports"],
        serde_json::json!(["8080:8090", "http"])
    );
    assert_eq!(rules[1]["protocol"], "UDP");
    assert!(rules[1].get("destination").is_none());
    assert_eq!(
        rules[2]["source"]["nets"],
        serde_json::json!(["10.0.0.0/8"])
    );
    assert_eq!(
        rules[2]["source"]["notNets"],
        serde_json::json!(["10.1.0.0/16"])
    );
    assert!(conv.yaml().contains("apiVersion: projectcalico.org/v3"));
}

#[test]
fn convert_to_networkpolicy_writes_label_selectors_and_ip_blocks() {
    let c = cluster(&[
        NS,
        "
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  order: 1000
  selector: app == 'api' && tier != 'x' && has(role) && !has(debug)
  egress:
  - action: Allow
    protocol: TCP
    destination:
      namespaceSelector: projectcalico.org/name == 'shop'
      selector: app in {'db', 'cache'}
      ports: [5432, '6000:6010', redis]
  - action: Allow
    destination:
      nets: [10.0.0.0/8, 192.168.0.0/16]
      notNets: [10.1.0.0/16, 192.168.0.0/16]
",
    ]);
    let conv = convert(&c, Target::NetworkPolicy);
    assert!(conv.refused.is_empty(), "{:#?}", conv.refused);
    let spec = &conv.converted[0].document["spec"];
    assert_eq!(
        spec["podSelector"],
        serde_json::json!({
            "matchLabels": {"app": "api"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["x"]},
                {"key": "role", "operator": "Exists"},
                {"key": "debug", "operator": "DoesNotExist"},
            ]
        })
    );
    assert_eq!(spec["policyTypes"], serde_json::json!(["Egress"]));
    let r0 = &spec["egress"][0];
    assert_eq!(
        r0["to"][0]["namespaceSelector"],
        serde_json::json!({"matchLabels": {"kubernetes.io/metadata.name": "shop"}})
    );
    assert_eq!(
        r0["ports"],
        serde_json::json!([
            {"protocol": "TCP", "port": 5432},
            {"protocol": "TCP", "port": 6000, "endPort": 6010},
            {"protocol": "TCP", "port": "redis"},
        ])
    );
    // 192.168.0.0/16 is wholly excluded: only the 10/8 block is left.
    assert_eq!(
        spec["egress"][1]["to"],
        serde_json::json!([{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}])
    );
    keeps_verdicts(&c, Target::NetworkPolicy);
}

// ---------------------------------------------------------------------------------------
// Refusals, one per reason.
// ---------------------------------------------------------------------------------------

/// The single refusal converting `policy` (in namespace `shop`) gives: (field, reason).
fn refusal(policy: &str, target: Target) -> (String, String) {
    let mut texts = vec![NS];
    texts.push(policy);
    let c = cluster(&texts);
    let conv = convert(&c, target);
    assert_eq!(conv.refused.len(), 1, "{conv:#?}");
    assert!(conv.converted.is_empty(), "{conv:#?}");
    let r = &conv.refused[0];
    (r.field.clone(), r.reason.clone())
}

/// The refusal of the object named `name` (`Kind namespace/name` ends with it) when
/// converting `objects` together.
fn refusal_with(objects: &[&str], target: Target, name: &str) -> (String, String) {
    let mut texts = vec![NS];
    texts.extend(objects);
    let c = cluster(&texts);
    let conv = convert(&c, target);
    let r = conv
        .refused
        .iter()
        .find(|r| r.object.ends_with(name))
        .unwrap_or_else(|| panic!("{name} is refused: {conv:#?}"));
    (r.field.clone(), r.reason.clone())
}

fn calico(spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"
    )
}

#[test]
fn convert_refuses_deny_pass_and_log_in_a_networkpolicy() {
    for (action, word) in [
        ("Deny", "only allows"),
        ("Pass", "Baseline"),
        ("Log", "logged"),
    ] {
        let p = calico(&format!(
            "  ingress:\n  - action: Allow\n  - action: {action}\n"
        ));
        let (field, reason) = refusal(&p, Target::NetworkPolicy);
        assert_eq!(field, "spec.ingress[1].action");
        assert!(reason.contains(word), "{reason}");
    }
}

#[test]
fn convert_refuses_an_order_that_would_move_across_a_deny() {
    let deny = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: block, namespace: shop}\nspec:\n  order: 500\n  ingress:\n  - action: Deny\n";
    let early = calico("  order: 100\n  ingress:\n  - action: Allow\n");
    let (field, reason) = refusal_with(&[&early, deny], Target::NetworkPolicy, " shop/p");
    assert_eq!(field, "spec.order");
    assert!(
        reason.contains("NetworkPolicy.projectcalico.org shop/block (order 500)"),
        "{reason}"
    );
    // After the Deny on both sides (order 2000 and 1000 > 500): converts.
    let late = calico("  order: 2000\n  ingress:\n  - action: Allow\n");
    let c = cluster(&[NS, &late, deny]);
    let conv = keeps_verdicts(&c, Target::NetworkPolicy);
    assert_eq!(conv.converted.len(), 1, "{conv:#?}");
    // The same check guards the other direction: a Calico Deny at order 1000 named
    // between `web` and `knp.default.web`.
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{}]\n";
    let tie = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  order: 1000\n  ingress:\n  - action: Deny\n";
    let (field, reason) = refusal_with(&[np, tie], Target::Calico, " shop/web");
    assert_eq!(field, "metadata.name");
    assert!(reason.contains("knp.default.web"), "{reason}");
}

#[test]
fn convert_refuses_selectors_beyond_a_label_selector() {
    for (sel, word) in [
        ("app == 'a' || app == 'b'", "`||`"),
        ("app contains 'we'", "contains"),
        ("pcns.team == 'a'", "pcns.team"),
        ("!(app == 'a' && tier == 'b')", "`!`"),
    ] {
        let p = calico(&format!("  selector: \"{sel}\"\n  ingress: []\n"));
        let (field, reason) = refusal(&p, Target::NetworkPolicy);
        assert_eq!(field, "spec.selector", "{sel}");
        assert!(reason.contains(word), "{sel}: {reason}");
    }
    let p =
        calico("  ingress:\n  - action: Allow\n    source:\n      namespaceSelector: global()\n");
    let (field, reason) = refusal(&p, Target::NetworkPolicy);
    assert_eq!(field, "spec.ingress[0].source.namespaceSelector");
    assert!(reason.contains("global()"), "{reason}");
}

#[test]
fn convert_refuses_notnets_without_nets_notselector_services_and_mixed_peers() {
    for (source, field, word) in [
        (
            "notNets: [10.0.0.0/8]",
            "spec.ingress[0].source.notNets",
            "no address",
        ),
        (
            "notSelector: app == 'x'",
            "spec.ingress[0].source.notSelector",
            "exclude",
        ),
        (
            "services: {name: web, namespace: shop}",
            "spec.ingress[0].source.services",
            "Service",
        ),
        (
            "{selector: app == 'x', nets: [10.0.0.0/8]}",
            "spec.ingress[0].source.nets",
            "either pods or an ipBlock",
        ),
    ] {
        let p = calico(&format!(
            "  ingress:\n  - action: Allow\n    source: {}\n",
            if source.starts_with('{') {
                source.to_string()
            } else {
                format!("{{{source}}}")
            }
        ));
        let (f, reason) = refusal(&p, Target::NetworkPolicy);
        assert_eq!(f, field, "{source}");
        assert!(reason.contains(word), "{source}: {reason}");
    }
    let p = calico("  ingress:\n  - action: Allow\n    notProtocol: UDP\n");
    assert_eq!(
        refusal(&p, Target::NetworkPolicy).0,
        "spec.ingress[0].notProtocol"
    );
    let p = calico(
        "  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {notPorts: [22]}\n",
    );
    assert_eq!(
        refusal(&p, Target::NetworkPolicy).0,
        "spec.ingress[0].destination.notPorts"
    );
}

#[test]
fn convert_refuses_a_selector_that_also_matches_a_network_set() {
    let set = "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: partners, namespace: shop, labels: {app: partner}}\nspec: {nets: [192.168.1.0/24]}\n";
    let p = calico("  ingress:\n  - action: Allow\n    source: {selector: has(app)}\n");
    let (field, reason) = refusal_with(&[&p, set], Target::NetworkPolicy, " shop/p");
    assert_eq!(field, "spec.ingress[0].source.selector");
    assert!(reason.contains("NetworkSet/shop/partners"), "{reason}");
    // Restricted to pods, as Calico's own conversion writes it: converts.
    let p = calico(
        "  ingress:\n  - action: Allow\n    source: {selector: projectcalico.org/orchestrator == 'k8s' && has(app)}\n",
    );
    let c = cluster(&[NS, &p, set]);
    assert_eq!(keeps_verdicts(&c, Target::NetworkPolicy).converted.len(), 1);
}

#[test]
fn convert_refuses_cluster_scope_and_every_cluster_policy() {
    let gnp = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  ingress:\n  - action: Allow\n";
    let (field, reason) = refusal(gnp, Target::NetworkPolicy);
    assert_eq!(field, "kind");
    assert!(reason.contains("clusternetworkpolicy"), "{reason}");
    let (field, reason) = refusal(gnp, Target::ClusterNetworkPolicy);
    assert_eq!(field, "spec.selector");
    assert!(reason.contains("end of Calico's default tier"), "{reason}");
    let pass = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  egress:\n  - action: Pass\n";
    assert_eq!(
        refusal(pass, Target::ClusterNetworkPolicy).0,
        "spec.egress[0].action"
    );
    let p = calico("  ingress: []\n");
    assert_eq!(refusal(&p, Target::ClusterNetworkPolicy).0, "kind");
    for (tier, word) in [("Admin", "falls through"), ("Baseline", "left undecided")] {
        let cnp = format!("apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: c}}\nspec:\n  tier: {tier}\n  priority: 1\n  subject: {{namespaces: {{}}}}\n  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}]}}\n");
        let (field, reason) = refusal(&cnp, Target::Calico);
        assert_eq!(field, "spec.tier");
        assert!(reason.contains(word), "{reason}");
    }
}

#[test]
fn convert_refuses_a_name_the_input_already_uses() {
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  podSelector: {}\n";
    let p = calico("  order: 2000\n  ingress: []\n");
    let (field, reason) = refusal_with(&[np, &p], Target::NetworkPolicy, " shop/p");
    assert_eq!(field, "metadata.name");
    assert!(
        reason.contains("already has a NetworkPolicy shop/p"),
        "{reason}"
    );
}

#[test]
fn convert_to_calico_refuses_calico_keys_and_a_network_set_carrying_the_pod_label() {
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchLabels: {projectcalico.org/namespace: shop}}}]\n";
    let (field, reason) = refusal(np, Target::Calico);
    assert_eq!(field, "spec.ingress[0].from[0].podSelector");
    assert!(reason.contains("projectcalico.org/namespace"), "{reason}");
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n";
    let set = "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: fake, namespace: shop, labels: {projectcalico.org/orchestrator: k8s}}\nspec: {nets: [192.168.1.0/24]}\n";
    let (field, reason) = refusal_with(&[np, set], Target::Calico, " shop/web");
    assert_eq!(field, "spec");
    assert!(reason.contains("NetworkSet/shop/fake"), "{reason}");
}
