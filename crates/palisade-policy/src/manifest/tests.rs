//! Tests of [`super::load`]: defaulting, validation and error attribution, table-driven.

use super::*;
use crate::model::{
    Action, ClusterPeer, IpBlock, NamespaceMatch, NetworkPolicy, NetworkPolicyPeer,
    NetworkPolicyRule, PortMatch, Protocol, Subject, Tier,
};
use crate::selector::LabelSelector;

fn load_one(text: &str) -> Loaded {
    load(&[("t.yaml".to_string(), text.to_string())])
}

/// A NetworkPolicy `default/web` with the given spec (YAML flow style).
fn np_yaml(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  namespace: default\nspec: {spec}\n"
    )
}

/// Loads one valid NetworkPolicy and returns it.
fn np(spec: &str) -> NetworkPolicy {
    let l = load_one(&np_yaml(spec));
    assert!(l.errors.is_empty(), "{spec}: {:?}", l.errors);
    l.cluster
        .network_policies
        .get("default/web")
        .cloned()
        .expect("loaded")
}

/// The field paths of every error.
fn error_fields(l: &Loaded) -> Vec<String> {
    l.errors
        .iter()
        .map(|e| e.field().unwrap_or("").to_string())
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::from_labels(pairs.iter().copied())
}

fn tcp(port: u16) -> PortMatch {
    PortMatch::Range {
        protocol: Protocol::Tcp,
        port,
        end_port: port,
    }
}

#[test]
fn policy_types_default_like_the_api_server() {
    // (rule, spec, ingress isolated, egress isolated)
    let cases: &[(&str, &str, bool, bool)] = &[
        (
            "no policyTypes and no egress isolates ingress only",
            "{podSelector: {}}",
            true,
            false,
        ),
        (
            "no policyTypes with egress rules isolates both",
            "{podSelector: {}, egress: [{to: [{podSelector: {}}]}]}",
            true,
            true,
        ),
        (
            "no policyTypes with an empty egress list isolates ingress only",
            "{podSelector: {}, egress: []}",
            true,
            false,
        ),
        (
            "an empty policyTypes list defaults too",
            "{podSelector: {}, policyTypes: []}",
            true,
            false,
        ),
        (
            "explicit Egress only isolates egress only",
            "{podSelector: {}, policyTypes: [Egress]}",
            false,
            true,
        ),
        (
            "explicit Ingress and Egress without rules isolates both",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}",
            true,
            true,
        ),
    ];
    for (rule, spec, ing, eg) in cases {
        let p = np(spec);
        assert_eq!(p.ingress.is_some(), *ing, "{rule}");
        assert_eq!(p.egress.is_some(), *eg, "{rule}");
    }
}

#[test]
fn deny_all_has_empty_rule_lists_but_allow_all_has_one_open_rule() {
    let deny = np("{podSelector: {}, policyTypes: [Ingress]}");
    assert_eq!(deny.ingress, Some(vec![]));
    let allow = np("{podSelector: {}, ingress: [{}]}");
    assert_eq!(
        allow.ingress,
        Some(vec![NetworkPolicyRule {
            peers: None,
            ports: None
        }])
    );
}

#[test]
fn absent_or_empty_peers_and_ports_mean_all() {
    let cases: &[(&str, &str)] = &[
        ("absent from and ports", "{podSelector: {}, ingress: [{}]}"),
        ("empty from", "{podSelector: {}, ingress: [{from: []}]}"),
        ("empty ports", "{podSelector: {}, ingress: [{ports: []}]}"),
        (
            "null from and ports",
            "{podSelector: {}, ingress: [{from: null, ports: null}]}",
        ),
    ];
    for (rule, spec) in cases {
        let r = &np(spec).ingress.unwrap()[0];
        assert_eq!(r.peers, None, "{rule}");
        assert_eq!(r.ports, None, "{rule}");
    }
}

#[test]
fn absent_pod_selector_selects_every_pod_of_the_namespace() {
    assert!(np("{}").pod_selector.is_everything());
}

#[test]
fn ports_default_to_tcp_and_a_missing_port_means_every_port_of_the_protocol() {
    let p = np(
        "{podSelector: {}, ingress: [{ports: [{port: 80}, {protocol: UDP}, {port: 8000, endPort: 8080}, {port: http}, {protocol: SCTP, port: 9}]}]}",
    );
    assert_eq!(
        p.ingress.unwrap()[0].ports,
        Some(vec![
            tcp(80),
            PortMatch::AllPorts(Protocol::Udp),
            PortMatch::Range {
                protocol: Protocol::Tcp,
                port: 8000,
                end_port: 8080
            },
            PortMatch::Named {
                protocol: Protocol::Tcp,
                name: "http".into()
            },
            PortMatch::Range {
                protocol: Protocol::Sctp,
                port: 9,
                end_port: 9
            },
        ])
    );
}

#[test]
fn a_peer_with_only_one_selector_is_defaulted_on_the_other_axis() {
    let p = np(
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}, {podSelector: {matchLabels: {app: x}}}]}]}",
    );
    assert_eq!(
        p.ingress.unwrap()[0].peers,
        Some(vec![
            NetworkPolicyPeer::Pods {
                namespaces: NamespaceMatch::Selector(sel(&[("team", "a")])),
                pods: LabelSelector::everything(),
            },
            NetworkPolicyPeer::Pods {
                namespaces: NamespaceMatch::Named("default".into()),
                pods: sel(&[("app", "x")]),
            },
        ])
    );
}

/// Seed 001: one `-` turns AND into OR.
const AND_PEER: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: and-peer
  namespace: default
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          app: helidon
      podSelector:
        matchLabels:
          role: frontend
";

const OR_PEERS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: or-peers
  namespace: default
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          app: helidon
    - podSelector:
        matchLabels:
          role: frontend
";

#[test]
fn namespace_and_pod_selector_in_one_peer_are_anded() {
    let l = load_one(AND_PEER);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let p = &l.cluster.network_policies["default/and-peer"];
    assert_eq!(
        p.ingress.as_ref().unwrap()[0].peers,
        Some(vec![NetworkPolicyPeer::Pods {
            namespaces: NamespaceMatch::Selector(sel(&[("app", "helidon")])),
            pods: sel(&[("role", "frontend")]),
        }])
    );
}

#[test]
fn namespace_and_pod_selector_in_two_peers_are_ored() {
    let l = load_one(OR_PEERS);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let p = &l.cluster.network_policies["default/or-peers"];
    assert_eq!(
        p.ingress.as_ref().unwrap()[0].peers,
        Some(vec![
            NetworkPolicyPeer::Pods {
                namespaces: NamespaceMatch::Selector(sel(&[("app", "helidon")])),
                pods: LabelSelector::everything(),
            },
            NetworkPolicyPeer::Pods {
                namespaces: NamespaceMatch::Named("default".into()),
                pods: sel(&[("role", "frontend")]),
            },
        ])
    );
}

#[test]
fn ip_blocks_are_truncated_to_their_network_with_a_warning() {
    let l = load_one(&np_yaml(
        "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.1/8, except: [10.1.2.3/16]}}]}]}",
    ));
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let p = &l.cluster.network_policies["default/web"];
    assert_eq!(
        p.egress.as_ref().unwrap()[0].peers,
        Some(vec![NetworkPolicyPeer::IpBlock(IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        })])
    );
    let fields: Vec<&str> = l.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.egress[0].to[0].ipBlock.cidr",
            "spec.egress[0].to[0].ipBlock.except[0]"
        ]
    );
}

#[test]
fn rules_ignored_by_explicit_policy_types_are_warned_about() {
    let l = load_one(&np_yaml(
        "{podSelector: {}, policyTypes: [Egress], ingress: [{}]}",
    ));
    assert!(l.errors.is_empty());
    assert!(l.cluster.network_policies["default/web"].ingress.is_none());
    assert_eq!(l.warnings.len(), 1);
    assert_eq!(l.warnings[0].field, "spec.ingress");
}

#[test]
fn network_policy_validation_names_every_bad_field() {
    // (rule, spec, expected error field paths in order)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "endPort below port",
            "{ingress: [{ports: [{port: 80}, {port: 8080, endPort: 80}]}]}",
            &["spec.ingress[0].ports[1].endPort"],
        ),
        (
            "endPort without port",
            "{ingress: [{ports: [{endPort: 80}]}]}",
            &["spec.ingress[0].ports[0].endPort"],
        ),
        (
            "endPort with a named port",
            "{ingress: [{ports: [{port: http, endPort: 80}]}]}",
            &["spec.ingress[0].ports[0].endPort"],
        ),
        ("port zero", "{ingress: [{ports: [{port: 0}]}]}", &["spec.ingress[0].ports[0].port"]),
        ("port above 65535", "{egress: [{ports: [{port: 65536}]}]}", &["spec.egress[0].ports[0].port"]),
        (
            "endPort above 65535",
            "{egress: [{ports: [{port: 1, endPort: 70000}]}]}",
            &["spec.egress[0].ports[0].endPort"],
        ),
        (
            "named port with uppercase",
            "{ingress: [{ports: [{port: HTTP}]}]}",
            &["spec.ingress[0].ports[0].port"],
        ),
        (
            "named port longer than 15",
            "{ingress: [{ports: [{port: abcdefghijklmnop}]}]}",
            &["spec.ingress[0].ports[0].port"],
        ),
        (
            "numeric string port is a bad name",
            "{ingress: [{ports: [{port: '80'}]}]}",
            &["spec.ingress[0].ports[0].port"],
        ),
        (
            "unknown protocol",
            "{ingress: [{ports: [{protocol: ICMP}]}]}",
            &["spec.ingress[0].ports[0].protocol"],
        ),
        (
            "lowercase protocol",
            "{ingress: [{ports: [{protocol: tcp, port: 80}]}]}",
            &["spec.ingress[0].ports[0].protocol"],
        ),
        ("unknown policyType", "{policyTypes: [Ingres]}", &["spec.policyTypes[0]"]),
        (
            "three policyTypes",
            "{policyTypes: [Ingress, Egress, Ingress]}",
            &["spec.policyTypes"],
        ),
        ("empty peer", "{ingress: [{from: [{}]}]}", &["spec.ingress[0].from[0]"]),
        (
            "ipBlock with another peer",
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            &["spec.ingress[0].from[0]"],
        ),
        (
            "bad cidr",
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0}}]}]}",
            &["spec.egress[0].to[0].ipBlock.cidr"],
        ),
        (
            "except outside cidr",
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]}",
            &["spec.egress[0].to[0].ipBlock.except[0]"],
        ),
        (
            "except equal to cidr is not strictly inside",
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]}",
            &["spec.egress[0].to[0].ipBlock.except[0]"],
        ),
        (
            "except wider than cidr",
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}}]}]}",
            &["spec.egress[0].to[0].ipBlock.except[0]"],
        ),
        (
            "except of another family",
            "{egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: ['fd00::/8']}}]}]}",
            &["spec.egress[0].to[0].ipBlock.except[0]"],
        ),
        (
            "bad except",
            "{egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [nope]}}]}]}",
            &["spec.egress[0].to[0].ipBlock.except[0]"],
        ),
        (
            "bad podSelector label value",
            "{podSelector: {matchLabels: {app: 'a b'}}}",
            &["spec.podSelector.matchLabels[\"app\"]"],
        ),
        (
            "bad peer namespaceSelector expression",
            "{ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: In}]}}]}]}",
            &["spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values"],
        ),
        (
            "every problem of one policy is collected",
            "{policyTypes: [Sideways], ingress: [{ports: [{port: 0}, {port: 90, endPort: 80}]}], egress: [{to: [{}]}]}",
            &[
                "spec.policyTypes[0]",
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].ports[1].endPort",
                "spec.egress[0].to[0]",
            ],
        ),
    ];
    for (rule, spec, want) in cases {
        let l = load_one(&np_yaml(spec));
        assert_eq!(error_fields(&l), *want, "{rule}: {:?}", l.errors);
        assert!(
            l.cluster.network_policies.is_empty(),
            "{rule}: must be rejected"
        );
    }
}

#[test]
fn the_end_port_error_reads_like_the_style_guide_example() {
    let l = load(&[(
        "web.yaml".to_string(),
        np_yaml("{ingress: [{ports: [{port: 80}, {port: 8080, endPort: 80}]}]}"),
    )]);
    assert_eq!(
        l.errors[0].to_string(),
        "web.yaml:6:61: NetworkPolicy default/web: spec.ingress[0].ports[1].endPort: must not be less than port (8080)"
    );
}

#[test]
fn metadata_is_validated() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "an uppercase policy name",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Web}\nspec: {}",
            "metadata.name",
        ),
        (
            "a namespace name with a dot",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}",
            "metadata.name",
        ),
        (
            "a bad pod label",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {'a/b/c': x}}\nspec: {containers: []}",
            "metadata.labels[\"a/b/c\"]",
        ),
        (
            "a bad namespace",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: Team_A}\nspec: {containers: []}",
            "metadata.namespace",
        ),
        (
            "a bad container port name",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{name: Web, containerPort: 80}]}]}",
            "spec.containers[0].ports[0].name",
        ),
        (
            "a bad pod IP",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\nstatus: {podIP: 10.0.0.300}",
            "status.podIP",
        ),
        (
            "two pod IPs of one family",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\nstatus: {podIPs: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]}",
            "status.podIPs[1].ip",
        ),
    ];
    for (rule, yaml, field) in cases {
        let l = load_one(yaml);
        assert_eq!(
            error_fields(&l),
            vec![field.to_string()],
            "{rule}: {:?}",
            l.errors
        );
    }
}

#[test]
fn namespaces_get_their_automatic_name_label() {
    let l = load_one(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: another-ns, labels: {team: b}}",
    );
    let ns = &l.cluster.namespaces["another-ns"];
    assert_eq!(ns.labels["kubernetes.io/metadata.name"], "another-ns");
    assert_eq!(ns.labels["team"], "b");
    let l = load_one(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {kubernetes.io/metadata.name: b}}",
    );
    assert_eq!(
        l.cluster.namespaces["a"].labels["kubernetes.io/metadata.name"],
        "a"
    );
    assert_eq!(
        l.warnings.len(),
        1,
        "overriding the automatic label is warned about"
    );
}

#[test]
fn pod_ips_come_from_pod_ips_else_pod_ip() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "podIPs wins",
            "{podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}",
            &["10.0.0.1", "fd00::1"],
        ),
        ("podIP alone", "{podIP: 10.0.0.2}", &["10.0.0.2"]),
        (
            "empty podIPs falls back",
            "{podIP: 10.0.0.3, podIPs: []}",
            &["10.0.0.3"],
        ),
        ("unscheduled", "{}", &[]),
    ];
    for (rule, status, want) in cases {
        let l = load_one(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {{containers: []}}\nstatus: {status}"
        ));
        assert!(l.errors.is_empty(), "{rule}: {:?}", l.errors);
        let got: Vec<String> = l.cluster.pods["default/p"]
            .ips
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(got, *want, "{rule}");
    }
}

#[test]
fn pods_keep_container_ports_host_network_and_node() {
    let l = load_one(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns}}\nspec:\n  nodeName: n1\n  hostNetwork: true\n  containers:\n  - name: coredns\n    ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]\n",
    );
    let p = &l.cluster.pods["kube-system/dns"];
    assert!(p.host_network);
    assert_eq!(p.node_name.as_deref(), Some("n1"));
    assert_eq!(p.resolve_named_port("dns", Protocol::Udp), Some(53));
    assert_eq!(p.resolve_named_port("dns-tcp", Protocol::Tcp), Some(53));
}

#[test]
fn host_network_pods_without_addresses_get_their_nodes_and_others_keep_theirs() {
    let l = load_one(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus:\n  addresses: [{type: Hostname, address: n1}, {type: InternalIP, address: 10.0.1.1}, {type: InternalIP, address: 'fd00::1'}, {type: ExternalIP, address: 192.0.2.1}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {nodeName: n1, hostNetwork: true, containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: given, namespace: x}\nspec: {nodeName: n1, hostNetwork: true, containers: [{name: c}]}\nstatus: {podIP: 10.0.1.9}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: lost, namespace: x}\nspec: {nodeName: n9, hostNetwork: true, containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: plain, namespace: x}\nspec: {nodeName: n1, containers: [{name: c}]}\n",
    );
    let ips = |k: &str| -> Vec<String> {
        l.cluster.pods[k]
            .ips
            .iter()
            .map(|i| i.to_string())
            .collect()
    };
    assert_eq!(
        ips("x/h"),
        ["10.0.1.1", "fd00::1"],
        "first address of each family"
    );
    assert_eq!(ips("x/given"), ["10.0.1.9"], "status.podIPs win");
    assert!(ips("x/lost").is_empty(), "unknown node: no address");
    assert!(
        ips("x/plain").is_empty(),
        "not host-network: no address until scheduled"
    );
}

#[test]
fn services_nodes_and_endpoint_slices_load() {
    let l = load_one(
        "apiVersion: v1
kind: Service
metadata: {name: kubernetes}
spec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1], ports: [{name: https, port: 443, targetPort: 6443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kubernetes, labels: {kubernetes.io/service-name: kubernetes}}
addressType: IPv4
endpoints: [{addresses: [192.168.1.10]}, {addresses: [192.168.1.11], conditions: {ready: false}}]
ports: [{name: https, port: 6443, protocol: TCP}]
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 192.168.1.20}, {type: Hostname, address: n1}]}
",
    );
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let svc = &l.cluster.services["default/kubernetes"];
    assert_eq!(svc.selector, None);
    assert_eq!(
        svc.cluster_ips,
        vec!["10.96.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(svc.ports[0].port, 443);
    let es = &l.cluster.endpoint_slices["default/kubernetes"];
    assert_eq!(es.service_name.as_deref(), Some("kubernetes"));
    assert_eq!(es.addresses.len(), 1, "not-ready endpoints are dropped");
    assert_eq!(es.ports[0].port, 6443);
    assert_eq!(
        l.cluster.nodes["n1"].addresses.len(),
        1,
        "hostnames are not addresses"
    );
}

#[test]
fn a_malformed_object_is_rejected_alone() {
    let l = load_one(&format!(
        "{}---\n{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {{containers: 7}}\n---\nkey: [broken\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ok}}\n",
        np_yaml("{ingress: [{ports: [{port: 0}]}]}"),
        AND_PEER
    ));
    assert_eq!(l.errors.len(), 3, "{:?}", l.errors);
    assert!(matches!(l.errors[0], ManifestError::Invalid { .. }));
    assert_eq!(l.errors[1].field(), Some("spec.containers"));
    assert_eq!(l.errors[1].message(), "expected a list, found the number 7");
    assert!(matches!(
        l.errors[2],
        ManifestError::Syntax { document: 4, .. }
    ));
    assert!(l.cluster.network_policies.contains_key("default/and-peer"));
    assert!(l.cluster.namespaces.contains_key("ok"));
}

#[test]
fn unidentifiable_documents_are_errors_and_unknown_kinds_are_warnings() {
    let l = load_one(
        "kind: Pod\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {}\n---\n- 1\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n---\napiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: old}\n",
    );
    assert_eq!(l.errors.len(), 4, "{:?}", l.errors);
    assert!(l.errors[..3]
        .iter()
        .all(|e| matches!(e, ManifestError::Document { .. })));
    assert_eq!(
        l.errors[0].to_string(),
        "t.yaml:1:1: document 1: apiVersion is required"
    );
    assert_eq!(
        l.errors[1].to_string(),
        "t.yaml:6:11: document 2: Pod has no metadata.name"
    );
    // A policy at a version Palisade does not enforce is refused, not skipped.
    assert_eq!(l.errors[3].field(), Some("kind"));
    assert!(l.cluster.network_policies.is_empty());
    assert_eq!(
        l.warnings[0].to_string(),
        "t.yaml:11:7: ConfigMap d: kind: kind ConfigMap (v1) has no effect on network policy; skipped"
    );
    let fields: Vec<&str> = l.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, vec!["kind"]);
}

#[test]
fn lists_and_json_load_like_yaml_documents() {
    let l = load_one(
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n",
    );
    assert_eq!(l.cluster.namespaces.len(), 2);
    let l = load_one(
        r#"{"apiVersion": "v1", "kind": "NamespaceList", "items": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}]}"#,
    );
    assert!(l.errors.is_empty());
    assert!(l.cluster.namespaces.contains_key("c"));
}

#[test]
fn errors_inside_lists_name_the_item() {
    let l = load_one("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {kind: Namespace}\n");
    assert_eq!(l.errors.len(), 1);
    assert_eq!(
        l.errors[0].to_string(),
        "t.yaml:5:3: document 1: items[1]: apiVersion is required"
    );
}

#[test]
fn a_duplicate_object_replaces_the_earlier_one_with_a_warning() {
    let l = load(&[
        ("a.yaml".to_string(), np_yaml("{policyTypes: [Ingress]}")),
        ("b.yaml".to_string(), np_yaml("{policyTypes: [Egress]}")),
    ]);
    assert!(l.errors.is_empty());
    assert!(l.cluster.network_policies["default/web"].egress.is_some());
    assert_eq!(l.warnings.len(), 1);
    assert_eq!(l.warnings[0].file.as_deref(), Some("b.yaml"));
    assert!(
        l.warnings[0].message.contains("a.yaml"),
        "{}",
        l.warnings[0]
    );
}

#[test]
fn a_namespaced_object_without_namespace_lands_in_default() {
    let l = load_one("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}");
    assert!(l.cluster.pods.contains_key("default/p"));
}

// ---- cluster policies ----

fn cnp_yaml(spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: cnp}}\nspec: {spec}\n"
    )
}

fn anp_yaml(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

#[test]
fn a_cluster_network_policy_normalizes_peers_protocols_and_actions() {
    let l = load_one(&cnp_yaml(
        "{tier: Admin, priority: 10, subject: {pods: {podSelector: {matchLabels: {app: a}}}},
          ingress: [{name: from-mon, action: Accept, from: [{namespaces: {matchLabels: {team: mon}}}], protocols: [{tcp: {destinationPort: {number: 5000}}}, {udp: {destinationPort: {range: {start: 1000, end: 2000}}}}]}],
          egress: [{action: Deny, to: [{networks: [169.254.169.254/32]}]}, {action: Pass, to: [{pods: {namespaceSelector: {}, podSelector: {}}}], protocols: [{destinationNamedPort: http}]}, {action: Accept, to: [{nodes: {}}, {domainNames: ['*.example.com']}]}]}",
    ));
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let cp = &l.cluster.cluster_policies["ClusterNetworkPolicy/cnp"];
    assert_eq!(cp.tier, Tier::Admin);
    assert_eq!(cp.priority, 10);
    assert_eq!(
        cp.subject,
        Subject::Pods {
            namespaces: LabelSelector::everything(),
            pods: sel(&[("app", "a")])
        },
        "v1alpha2 namespaceSelector is optional and defaults to all namespaces"
    );
    let r = &cp.ingress[0];
    assert_eq!(r.name, "from-mon");
    assert_eq!(r.action, Action::Accept);
    assert_eq!(
        r.peers,
        vec![ClusterPeer::Namespaces(sel(&[("team", "mon")]))]
    );
    assert_eq!(
        r.ports,
        Some(vec![
            tcp(5000),
            PortMatch::Range {
                protocol: Protocol::Udp,
                port: 1000,
                end_port: 2000
            }
        ])
    );
    assert_eq!(
        cp.egress[0].peers,
        vec![ClusterPeer::Networks(vec!["169.254.169.254/32"
            .parse()
            .unwrap()])]
    );
    assert_eq!(cp.egress[0].ports, None);
    assert_eq!(cp.egress[1].action, Action::Pass);
    assert_eq!(
        cp.egress[1].ports.as_ref().map(Vec::len),
        Some(3),
        "a protocol-less named port matches the name under every protocol"
    );
    assert_eq!(
        cp.egress[2].peers,
        vec![
            ClusterPeer::Nodes(LabelSelector::everything()),
            ClusterPeer::DomainNames(vec!["*.example.com".into()])
        ]
    );
}

#[test]
fn admin_network_policy_allow_becomes_accept_and_kinds_key_separately() {
    let anp = anp_yaml(
        "AdminNetworkPolicy",
        "default",
        "{priority: 5, subject: {namespaces: {}}, ingress: [{action: Allow, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: mon}}}}], ports: [{portNumber: {port: 5000}}, {portRange: {protocol: UDP, start: 10, end: 20}}, {namedPort: metrics}]}]}",
    );
    let banp = anp_yaml(
        "BaselineAdminNetworkPolicy",
        "default",
        "{subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}",
    );
    let l = load_one(&format!("{anp}---\n{banp}"));
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let a = &l.cluster.cluster_policies["AdminNetworkPolicy/default"];
    assert_eq!(a.tier, Tier::Admin);
    assert_eq!(a.ingress[0].action, Action::Accept);
    let ports = a.ingress[0].ports.as_ref().unwrap();
    assert_eq!(ports[0], tcp(5000), "portNumber protocol defaults to TCP");
    assert_eq!(
        ports[1],
        PortMatch::Range {
            protocol: Protocol::Udp,
            port: 10,
            end_port: 20
        }
    );
    assert_eq!(ports.len(), 5);
    let b = &l.cluster.cluster_policies["BaselineAdminNetworkPolicy/default"];
    assert_eq!(b.tier, Tier::Baseline);
    assert_eq!(b.egress[0].action, Action::Deny);
}

#[test]
fn cluster_policy_validation_names_every_bad_field() {
    let base = "subject: {namespaces: {}}";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unknown tier", cnp_yaml(&format!("{{tier: Platform, priority: 1, {base}}}")), vec!["spec.tier"]),
        ("missing tier", cnp_yaml(&format!("{{priority: 1, {base}}}")), vec!["spec.tier"]),
        ("priority above 1000", cnp_yaml(&format!("{{tier: Admin, priority: 1001, {base}}}")), vec!["spec.priority"]),
        ("negative priority", cnp_yaml(&format!("{{tier: Admin, priority: -1, {base}}}")), vec!["spec.priority"]),
        ("missing priority", cnp_yaml(&format!("{{tier: Admin, {base}}}")), vec!["spec.priority"]),
        ("missing subject", cnp_yaml("{tier: Admin, priority: 1}"), vec!["spec.subject"]),
        (
            "subject with both fields",
            cnp_yaml("{tier: Admin, priority: 1, subject: {namespaces: {}, pods: {podSelector: {}}}}"),
            vec!["spec.subject"],
        ),
        (
            "subject pods without podSelector",
            cnp_yaml("{tier: Admin, priority: 1, subject: {pods: {namespaceSelector: {}}}}"),
            vec!["spec.subject.pods.podSelector"],
        ),
        (
            "Pass in the Baseline tier",
            cnp_yaml(&format!("{{tier: Baseline, priority: 1, {base}, egress: [{{action: Pass, to: [{{namespaces: {{}}}}]}}]}}")),
            vec!["spec.egress[0].action"],
        ),
        (
            "Allow is v1alpha1 spelling",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, egress: [{{action: Allow, to: [{{namespaces: {{}}}}]}}]}}")),
            vec!["spec.egress[0].action"],
        ),
        (
            "missing action",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, egress: [{{to: [{{namespaces: {{}}}}]}}]}}")),
            vec!["spec.egress[0].action"],
        ),
        (
            "rule with no peers",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{action: Deny}}]}}")),
            vec!["spec.ingress[0].from"],
        ),
        (
            "rule with an empty peer list",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{action: Deny, from: []}}]}}")),
            vec!["spec.ingress[0].from"],
        ),
        (
            "networks peer in ingress",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{action: Deny, from: [{{networks: [10.0.0.0/8]}}]}}]}}")),
            vec!["spec.ingress[0].from[0].networks"],
        ),
        (
            "peer with two fields",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, egress: [{{action: Deny, to: [{{namespaces: {{}}, networks: [10.0.0.0/8]}}]}}]}}")),
            vec!["spec.egress[0].to[0]"],
        ),
        (
            "peer of an unknown type fails closed",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, egress: [{{action: Deny, to: [{{services: [kubernetes]}}]}}]}}")),
            vec!["spec.egress[0].to[0].services", "spec.egress[0].to[0]"],
        ),
        (
            "bad network",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, egress: [{{action: Deny, to: [{{networks: [169.254.169.254]}}]}}]}}")),
            vec!["spec.egress[0].to[0].networks[0]"],
        ),
        (
            "empty networks",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, egress: [{{action: Deny, to: [{{networks: []}}]}}]}}")),
            vec!["spec.egress[0].to[0].networks"],
        ),
        (
            "domainNames in a Deny rule",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, egress: [{{action: Deny, to: [{{domainNames: [example.com]}}]}}]}}")),
            vec!["spec.egress[0].to[0].domainNames"],
        ),
        (
            "a bad domain name",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, egress: [{{action: Accept, to: [{{domainNames: ['ex*.com']}}]}}]}}")),
            vec!["spec.egress[0].to[0].domainNames[0]"],
        ),
        (
            "named port with a networks peer",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, egress: [{{action: Deny, to: [{{networks: [10.0.0.0/8]}}], protocols: [{{destinationNamedPort: http}}]}}]}}")),
            vec!["spec.egress[0]"],
        ),
        (
            "port range with start not below end",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: 90, end: 90}}}}}}}}]}}]}}")),
            vec!["spec.ingress[0].protocols[0].tcp.destinationPort.range"],
        ),
        (
            "port number zero",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{udp: {{destinationPort: {{number: 0}}}}}}]}}]}}")),
            vec!["spec.ingress[0].protocols[0].udp.destinationPort.number"],
        ),
        (
            "protocol entry with two protocols",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 1}}}}, udp: {{destinationPort: {{number: 1}}}}}}]}}]}}")),
            vec!["spec.ingress[0].protocols[0]"],
        ),
        (
            "tcp without destinationPort",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{}}}}]}}]}}")),
            vec!["spec.ingress[0].protocols[0].tcp.destinationPort"],
        ),
        (
            "v1alpha1 ports in v1alpha2",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portNumber: {{port: 80}}}}]}}]}}")),
            vec!["spec.ingress[0].ports"],
        ),
        (
            "bad named port",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{destinationNamedPort: Web}}]}}]}}")),
            vec!["spec.ingress[0].protocols[0].destinationNamedPort"],
        ),
        (
            "rule name over 100 characters",
            cnp_yaml(&format!("{{tier: Admin, priority: 1, {base}, ingress: [{{name: {}, action: Deny, from: [{{namespaces: {{}}}}]}}]}}", "x".repeat(101))),
            vec!["spec.ingress[0].name"],
        ),
        (
            "BANP not named default",
            anp_yaml("BaselineAdminNetworkPolicy", "other", &format!("{{{base}}}")),
            vec!["metadata.name"],
        ),
        (
            "Pass in BANP",
            anp_yaml("BaselineAdminNetworkPolicy", "default", &format!("{{{base}, egress: [{{action: Pass, to: [{{namespaces: {{}}}}]}}]}}")),
            vec!["spec.egress[0].action"],
        ),
        (
            "Accept is v1alpha2 spelling",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{priority: 1, {base}, egress: [{{action: Accept, to: [{{namespaces: {{}}}}]}}]}}")),
            vec!["spec.egress[0].action"],
        ),
        (
            "ANP priority out of range",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{priority: 5000, {base}}}")),
            vec!["spec.priority"],
        ),
        (
            "ANP subject pods need a namespaceSelector",
            anp_yaml("AdminNetworkPolicy", "a", "{priority: 1, subject: {pods: {podSelector: {}}}}"),
            vec!["spec.subject.pods.namespaceSelector"],
        ),
        (
            "ANP port entry with two fields",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portNumber: {{port: 80}}, namedPort: http}}]}}]}}")),
            vec!["spec.ingress[0].ports[0]"],
        ),
        (
            "ANP port range reversed",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portRange: {{start: 20, end: 10}}}}]}}]}}")),
            vec!["spec.ingress[0].ports[0].portRange"],
        ),
        (
            "ANP empty ports list",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], ports: []}}]}}")),
            vec!["spec.ingress[0].ports"],
        ),
        (
            "domainNames in BANP",
            anp_yaml("BaselineAdminNetworkPolicy", "default", &format!("{{{base}, egress: [{{action: Allow, to: [{{domainNames: [example.com]}}]}}]}}")),
            vec!["spec.egress[0].to[0].domainNames"],
        ),
        (
            "ANP unknown port protocol",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{priority: 1, {base}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portNumber: {{protocol: ICMP, port: 1}}}}]}}]}}")),
            vec!["spec.ingress[0].ports[0].portNumber.protocol"],
        ),
    ];
    for (rule, yaml, want) in cases {
        let l = load_one(&yaml);
        assert_eq!(error_fields(&l), want, "{rule}: {:?}", l.errors);
        assert!(
            l.cluster.cluster_policies.is_empty(),
            "{rule}: must be rejected"
        );
    }
}

#[test]
fn too_many_rules_are_rejected_per_api_version() {
    let rule = "{action: Deny, to: [{namespaces: {}}]}";
    let rules = |n: usize| vec![rule; n].join(", ");
    let ok = load_one(&cnp_yaml(&format!(
        "{{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}, egress: [{}]}}",
        rules(25)
    )));
    assert!(ok.errors.is_empty(), "{:?}", ok.errors);
    let bad = load_one(&cnp_yaml(&format!(
        "{{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}, egress: [{}]}}",
        rules(26)
    )));
    assert_eq!(error_fields(&bad), vec!["spec.egress"]);
    let anp = load_one(&anp_yaml(
        "AdminNetworkPolicy",
        "a",
        &format!(
            "{{priority: 1, subject: {{namespaces: {{}}}}, egress: [{}]}}",
            rules(101)
        ),
    ));
    assert_eq!(error_fields(&anp), vec!["spec.egress"]);
}

#[test]
fn unknown_cluster_policy_fields_are_errors() {
    let l = load_one(&cnp_yaml(
        "{tier: Admin, priority: 1, subject: {namespaces: {}}, colour: red, egress: [{action: Deny, to: [{namespaces: {}, note: x}]}]}",
    ));
    assert_eq!(
        error_fields(&l),
        vec!["spec.colour", "spec.egress[0].to[0].note"]
    );
    assert!(l.cluster.cluster_policies.is_empty());
}

// ---- lint ----

#[test]
fn lint_reports_empty_selections_unmatched_peers_and_domain_names() {
    let l = load_one(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, labels: {{app: web}}}}\nspec: {{containers: []}}\n---\n{}---\n{}---\n{}",
        np_yaml("{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}, {podSelector: {matchLabels: {app: typo}}}]}]}"),
        np_yaml("{podSelector: {matchLabels: {app: nothing}}}").replace("name: web", "name: empty"),
        cnp_yaml("{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{domainNames: [example.com]}, {nodes: {}}, {namespaces: {matchLabels: {team: none}}}]}]}"),
    ));
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let got: Vec<String> = lint(&l.cluster)
        .iter()
        .map(|w| format!("{}: {}", w.object, w.field))
        .collect();
    assert_eq!(
        got,
        vec![
            "NetworkPolicy default/empty: spec.podSelector",
            "NetworkPolicy default/web: spec.ingress[0].from[1]",
            "ClusterNetworkPolicy cnp: spec.egress[0].to[0].domainNames",
            "ClusterNetworkPolicy cnp: spec.egress[0].to[1]",
            "ClusterNetworkPolicy cnp: spec.egress[0].to[2]",
        ]
    );
}

#[test]
fn lint_is_quiet_about_policies_that_select_and_match_pods() {
    let l = load_one(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, labels: {{app: web, role: frontend}}}}\nspec: {{containers: []}}\n---\n{OR_PEERS}---\n{}",
        np_yaml("{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}]}]}"),
    ));
    let w = lint(&l.cluster);
    // OR_PEERS' first peer needs a namespace labelled app=helidon: none exists.
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].field, "spec.ingress[0].from[0]");
}

// ---- examples/ ----

/// Every directory under the repository's `examples/`, with its manifests in name order.
/// (Reading files is fine in a test; the library itself never does I/O.)
fn example_dirs() -> Vec<(std::path::PathBuf, Vec<(String, String)>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("examples/ exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .expect("readable")
                .map(|e| e.expect("readable").path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            files.sort();
            let inputs = files
                .iter()
                .map(|f| {
                    (
                        f.file_name().unwrap().to_string_lossy().into_owned(),
                        std::fs::read_to_string(f).expect("readable"),
                    )
                })
                .collect();
            (dir, inputs)
        })
        .collect()
}

#[test]
fn every_example_loads_cleanly() {
    let dirs = example_dirs();
    assert!(
        dirs.len() >= 4,
        "expected the four examples, found {}",
        dirs.len()
    );
    for (dir, inputs) in dirs {
        // The examples are inputs of the offline commands, which count a workload as
        // the pods it would run (examples/workloads has no Pod of its own).
        let mut l = load(&inputs);
        l.simulate_pods();
        let d = dir.display();
        assert!(l.errors.is_empty(), "{d}: {:#?}", l.errors);
        assert!(l.warnings.is_empty(), "{d}: {:#?}", l.warnings);
        let findings = lint(&l.cluster);
        assert!(findings.is_empty(), "{d}: {findings:#?}");
        assert!(!l.cluster.pods.is_empty(), "{d}: has pods");
        assert!(
            !l.cluster.network_policies.is_empty()
                || !l.cluster.cluster_policies.is_empty()
                || !l.cluster.calico_policies.is_empty(),
            "{d}: has policies"
        );
        assert!(
            l.cluster.pods.values().all(|p| !p.ips.is_empty()),
            "{d}: every pod has an IP"
        );
    }
}

#[test]
fn the_aws_walkthrough_example_has_the_articles_objects() {
    let (_, inputs) = example_dirs()
        .into_iter()
        .find(|(d, _)| d.ends_with("aws-walkthrough"))
        .expect("aws-walkthrough");
    let c = load(&inputs).cluster;
    for pod in [
        "default/demo-app",
        "default/client-one",
        "default/client-two",
        "another-ns/another-client",
        "kube-system/coredns",
    ] {
        assert!(c.pods.contains_key(pod), "{pod}");
    }
    assert_eq!(c.network_policies.len(), 5);
    let deny = &c.network_policies["default/demo-app-deny-all"];
    assert_eq!(deny.ingress, Some(vec![]));
    assert_eq!(deny.egress, None);
}

#[test]
fn the_dual_stack_example_gives_pods_both_families() {
    let (_, inputs) = example_dirs()
        .into_iter()
        .find(|(d, _)| d.ends_with("dual-stack"))
        .expect("dual-stack");
    let c = load(&inputs).cluster;
    let v6: ipnet::IpNet = "fd00:10:244::/64".parse().unwrap();
    for p in c.pods.values() {
        assert!(p.ips.iter().any(|i| i.is_ipv4()), "{}", p.key());
        assert!(p.ips.iter().any(|i| v6.contains(i)), "{}", p.key());
    }
}

// Issue 8: input is read exactly as Kubernetes reads it, or rejected.

/// The `(field, message)` of every error.
fn error_pairs(l: &Loaded) -> Vec<(String, String)> {
    l.errors
        .iter()
        .map(|e| (e.field().unwrap_or("").to_string(), e.message().to_string()))
        .collect()
}

#[test]
fn issue_8_unknown_fields_are_errors_with_the_field_probably_meant() {
    let cases: &[(&str, String, &str, &str)] = &[
        (
            "a typo in spec selects every pod if dropped",
            np_yaml("{podSelecter: {matchLabels: {app: web}}}"),
            "spec.podSelecter",
            "unknown field; did you mean podSelector?",
        ),
        (
            "a typo in a rule allows every source if dropped",
            np_yaml("{podSelector: {}, ingress: [{form: [{podSelector: {matchLabels: {app: x}}}]}]}"),
            "spec.ingress[0].form",
            "unknown field; did you mean from?",
        ),
        (
            "a typo in a selector",
            np_yaml("{podSelector: {matchLabel: {app: web}}}"),
            "spec.podSelector.matchLabel",
            "unknown field; did you mean matchLabels?",
        ),
        (
            "a typo of a direction",
            np_yaml("{podSelector: {}, ingres: []}"),
            "spec.ingres",
            "unknown field; did you mean ingress?",
        ),
        (
            "metadata is checked too",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, lables: {app: web}}\n".into(),
            "metadata.lables",
            "unknown field; did you mean labels?",
        ),
        (
            "status is checked too",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIp: 10.0.0.1}\n".into(),
            "status.podIp",
            "unknown field; did you mean podIP?",
        ),
        (
            "an unrelated name gets no suggestion",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\nflavour: x\n".into(),
            "flavour",
            "unknown field",
        ),
        (
            "cluster policies are checked in metadata too",
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c, namspace: x}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n".into(),
            "metadata.namspace",
            "unknown field; did you mean namespace?",
        ),
    ];
    for (rule, yaml, field, message) in cases {
        let l = load_one(yaml);
        assert_eq!(
            error_pairs(&l),
            vec![(field.to_string(), message.to_string())],
            "{rule}"
        );
        assert!(
            l.cluster.network_policies.is_empty()
                && l.cluster.pods.is_empty()
                && l.cluster.namespaces.is_empty()
                && l.cluster.cluster_policies.is_empty(),
            "{rule}: the object must be rejected"
        );
    }
}

#[test]
fn issue_8_an_unknown_field_error_points_at_its_key() {
    let l = load_one(&np_yaml("{podSelecter: {}}"));
    assert_eq!(
        l.errors[0].to_string(),
        "t.yaml:6:8: NetworkPolicy default/web: spec.podSelecter: unknown field; did you mean podSelector?"
    );
}

#[test]
fn issue_8_yaml_is_read_as_yaml_1_2() {
    let l = load_one(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: no\n  namespace: y\n  labels: {light: on, fan: off, ok: yes}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\nspec: {podSelector: {matchLabels: {light: on}}}\n",
    );
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert!(l.cluster.namespaces.contains_key("y"));
    let pod = &l.cluster.pods["y/no"];
    assert_eq!(pod.labels["light"], "on");
    assert_eq!(pod.labels["fan"], "off");
    assert_eq!(pod.labels["ok"], "yes");
    assert!(l.cluster.network_policies.contains_key("n/p"));
}

#[test]
fn issue_8_a_number_or_boolean_in_a_string_field_is_an_error_that_says_to_quote_it() {
    let cases = [
        (
            "version: 1.10",
            "metadata.labels.version",
            "expected a string, found the number 1.10: quote it (\"1.10\") to keep it a string",
        ),
        (
            "tier: 3",
            "metadata.labels.tier",
            "expected a string, found the number 3: quote it (\"3\") to keep it a string",
        ),
        (
            "debug: true",
            "metadata.labels.debug",
            "expected a string, found the boolean true: quote it (\"true\") to keep it a string",
        ),
    ];
    for (label, field, message) in cases {
        let l = load_one(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    {label}\n"
        ));
        assert_eq!(
            error_pairs(&l),
            vec![(field.to_string(), message.to_string())],
            "{label}"
        );
        assert_eq!(l.errors[0].position().map(|p| p.line), Some(6), "{label}");
        assert!(l.cluster.pods.is_empty(), "{label}");
    }
    let l =
        load_one("apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {version: \"1.10\"}}\n");
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert_eq!(l.cluster.pods["default/p"].labels["version"], "1.10");
}

#[test]
fn issue_8_every_wrong_type_and_unknown_field_of_an_object_is_reported_at_once() {
    let l = load_one(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {a: 1, b: ok, c: true}\nspec:\n  containers:\n  - {name: c, image: x, ports: [{containerPort: http}]}\n  nodeNmae: n1\n",
    );
    assert_eq!(
        error_fields(&l),
        vec![
            "metadata.labels.a",
            "metadata.labels.c",
            "spec.containers[0].ports[0].containerPort",
            "spec.nodeNmae",
        ],
        "{:?}",
        l.errors
    );
    assert!(l.cluster.pods.is_empty());
}

#[test]
fn issue_8_a_namespace_of_the_wrong_type_is_not_taken_as_default() {
    let l = load_one("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: 7}\n");
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    assert_eq!(l.errors[0].object(), Some("Pod 7/p"));
    assert_eq!(l.errors[0].field(), Some("metadata.namespace"));
    assert!(
        l.errors[0].message().contains("quote it"),
        "{}",
        l.errors[0]
    );
    assert!(l.cluster.pods.is_empty());
}

#[test]
fn issue_8_type_errors_carry_the_field_path_line_and_column() {
    let l = load_one(&format!(
        "# a comment\n\n{}",
        np_yaml("\n  podSelector: app=web")
    ));
    assert_eq!(
        l.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        vec!["t.yaml:9:16: NetworkPolicy default/web: spec.podSelector: expected a LabelSelector (a map), found the string \"app=web\""]
    );
    // In the second document of a file, lines count from the top of the file.
    let l = load_one(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a}}\n---\n{}",
        np_yaml("{podSelector: {}, ingress: [{ports: [{port: {}}]}]}")
    ));
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    assert_eq!(l.errors[0].field(), Some("spec.ingress[0].ports[0].port"));
    assert_eq!(l.errors[0].position().map(|p| p.line), Some(10));
}

#[test]
fn issue_8_json_errors_carry_line_and_column_too() {
    let l = load_one(
        "\n{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"a\"}}\n{\"apiVersion\": \"v1\", \"kind\": \"Pod\",\n \"metadata\": {\"name\": \"p\", \"labels\": {\"version\": 1.10}}}\n{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {\"name\": \"q\"},\n \"spec\": {\"containrs\": []}}\n",
    );
    let got: Vec<String> = l.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        vec![
            "t.yaml:4:50: Pod default/p: metadata.labels.version: expected a string, found the number 1.10: quote it (\"1.10\") to keep it a string",
            "t.yaml:6:11: Pod default/q: spec.containrs: unknown field; did you mean containers?",
        ]
    );
    assert!(l.cluster.namespaces.contains_key("a"));
    // Items of a top-level array are located too.
    let l = load_one("[{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"a\"}},\n {\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"b\", \"lables\": {}}}]");
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    assert_eq!(
        l.errors[0].position(),
        Some(Position {
            line: 2,
            column: 70
        })
    );
}

#[test]
fn issue_8_policy_kinds_palisade_does_not_enforce_are_errors() {
    let l = load_one(
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: deny-metadata}\nspec:\n  order: 100\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: default}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n",
    );
    let objects: Vec<&str> = l.errors.iter().filter_map(|e| e.object()).collect();
    assert_eq!(
        objects,
        vec!["Tier deny-metadata", "CiliumNetworkPolicy default/c"]
    );
    assert!(l.errors[0].message().contains("Calico"), "{}", l.errors[0]);
    assert_eq!(l.errors[0].position().map(|p| p.line), Some(2));
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert_eq!(l.warnings[0].object, "ConfigMap d");
    assert!(
        l.cluster.namespaces.contains_key("ok"),
        "the rest still loads"
    );
}

#[test]
fn issue_8_concatenated_documents_and_duplicate_keys_are_plain_errors() {
    let two_objects = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
    let l = load_one(two_objects);
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    let e = l.errors[0].to_string();
    assert!(e.contains("appears twice") && e.contains("`---`"), "{e}");
    assert!(e.starts_with("t.yaml:4:1: "), "{e}");
    assert!(
        !e.to_lowercase().contains("policy") && !e.contains("DuplicateKey"),
        "no library option names: {e}"
    );
    let l =
        load_one("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {app: a, app: b}\n");
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    let e = l.errors[0].to_string();
    assert!(e.contains("\"app\" appears twice"), "{e}");
    assert!(
        !e.contains("`---`"),
        "a nested duplicate is not two objects: {e}"
    );
    let l = load_one(
        r#"{"apiVersion": "v1", "kind": "Namespace", "kind": "Namespace", "metadata": {"name": "a"}}"#,
    );
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    assert!(l.errors[0].to_string().contains("appears twice"));
    assert!(l.cluster.namespaces.is_empty());
}

#[test]
fn issue_8_a_document_nested_too_deeply_is_refused_in_plain_words() {
    let mut yaml =
        String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n");
    for i in 0..80 {
        yaml.push_str(&format!("{}k{i}:\n", " ".repeat(4 + 2 * i)));
    }
    let l = load_one(&yaml);
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    assert_eq!(
        l.errors[0].message(),
        "document not read: it nests mappings and lists more than 32 levels deep"
    );
    let json = format!("{{\"a\": {}1{}}}", "[".repeat(60), "]".repeat(60));
    let l = load_one(&json);
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    assert!(
        l.errors[0].message().contains("more than 32 levels"),
        "{}",
        l.errors[0]
    );
    // The deepest document that is read must not exhaust a 2 MiB thread (tokio's
    // default, where the agent reads manifests).
    let mut yaml =
        String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  annotations:\n");
    for i in 0..29 {
        yaml.push_str(&format!("{}k{i}:\n", " ".repeat(4 + 2 * i)));
    }
    let l = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || load_one(&yaml))
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert!(
        l.errors
            .iter()
            .all(|e| !e.message().starts_with("document not read")),
        "{:?}",
        l.errors
    );
}

#[test]
fn an_alias_bomb_is_refused_without_being_expanded_and_ordinary_aliases_still_read() {
    // 197 bytes that expand to 262,144 strings (the fuzzer's seed `aliases.yaml`).
    let bomb = "a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n\
                b: &b [*a,*a,*a,*a,*a,*a,*a,*a]\n\
                c: &c [*b,*b,*b,*b,*b,*b,*b,*b]\n\
                d: &d [*c,*c,*c,*c,*c,*c,*c,*c]\n\
                e: &e [*d,*d,*d,*d,*d,*d,*d,*d]\n\
                f: [*e,*e,*e,*e,*e,*e,*e,*e]\n";
    let l = load_one(bomb);
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    assert!(
        l.errors[0].message().starts_with(
            "document not read: it holds more values than its text (nested YAML aliases"
        ),
        "{}",
        l.errors[0]
    );
    // An anchor reused a few times, as people write them, is read.
    let yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: &l {team: x, tier: web}\n  annotations: *l\n";
    let l = load_one(yaml);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert_eq!(l.cluster.namespaces.len(), 1);
}

#[test]
fn issue_8_empty_input_is_counted_and_named() {
    let l = load(&[
        (
            "empty.yaml".to_string(),
            "# nothing here\n---\n".to_string(),
        ),
        (
            "ns.yaml".to_string(),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n".to_string(),
        ),
    ]);
    assert_eq!(l.documents, 1);
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert_eq!(
        l.warnings[0].to_string(),
        "empty.yaml: no Kubernetes object in this file (it is empty or only comments)"
    );
    assert_eq!(load_one("").documents, 0);
}

#[test]
fn issue_8_lint_warnings_name_their_file() {
    let l = load(&[(
        "policy.yaml".to_string(),
        np_yaml("{podSelector: {matchLabels: {app: nothing}}}"),
    )]);
    let w = l.lint();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].file.as_deref(), Some("policy.yaml"));
    assert!(
        w[0].to_string()
            .starts_with("policy.yaml: NetworkPolicy default/web: "),
        "{}",
        w[0]
    );
}

#[test]
fn issue_8_a_rejected_object_can_keep_its_last_good_version_alone() {
    let two = |a_spec: &str, b_spec: &str| {
        format!(
            "{}---\n{}",
            np_yaml(a_spec).replace("name: web", "name: a"),
            np_yaml(b_spec).replace("name: web", "name: b")
        )
    };
    let before = load_one(&two(
        "{podSelector: {}, ingress: [{ports: [{port: 80}]}]}",
        "{podSelector: {}, ingress: [{ports: [{port: 81}]}]}",
    ));
    assert!(before.errors.is_empty(), "{:?}", before.errors);
    // a changes validly; b gets a typo.
    let after = load_one(&two(
        "{podSelector: {}, ingress: [{ports: [{port: 90}]}]}",
        "{podSelector: {}, ingres: [{ports: [{port: 91}]}]}",
    ));
    let mut cluster = after.cluster.clone();
    let kept = after
        .keep_last_good(&mut cluster, &before.cluster)
        .expect("every error names its object");
    assert_eq!(kept, vec!["NetworkPolicy default/b"]);
    let port = |name: &str| match &cluster.network_policies[name].ingress.as_ref().unwrap()[0]
        .ports
        .as_ref()
        .unwrap()[0]
    {
        PortMatch::Range { port, .. } => *port,
        other => panic!("{other:?}"),
    };
    assert_eq!(port("default/a"), 90, "the valid edit is taken");
    assert_eq!(
        port("default/b"),
        81,
        "the bad edit keeps the last good version"
    );
    // A document that does not parse names no object: the caller keeps everything.
    let broken = load_one(&format!(
        "{}---\nkey: [broken\n",
        np_yaml("{podSelector: {}}")
    ));
    assert!(broken
        .keep_last_good(&mut broken.cluster.clone(), &before.cluster)
        .is_none());
}

/// An AdminNetworkPolicy written exactly as the v0.1.1 CRD (network-policy-api
/// `config/crd/policy.networking.k8s.io_adminnetworkpolicies.yaml`) wants its peers:
/// `namespaces: {namespaceSelector: ...}` and `pods: {namespaces: {namespaceSelector},
/// podSelector}`; the subject keeps the LabelSelector / `namespaceSelector` shape.
const ANP_V011: &str = "apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata:
  name: v011
spec:
  priority: 10
  subject:
    pods:
      namespaceSelector:
        matchLabels:
          team: a
      podSelector:
        matchLabels:
          app: web
  ingress:
  - name: from-monitoring
    action: Allow
    from:
    - namespaces:
        namespaceSelector:
          matchLabels:
            kubernetes.io/metadata.name: monitoring
    - pods:
        namespaces:
          namespaceSelector:
            matchLabels:
              team: b
        podSelector:
          matchLabels:
            app: scraper
    ports:
    - portNumber:
        protocol: TCP
        port: 8080
  egress:
  - name: deny-db
    action: Deny
    to:
    - pods:
        namespaces:
          namespaceSelector: {}
        podSelector:
          matchLabels:
            app: db
";

#[test]
fn v1alpha1_peers_in_the_v0_1_1_shape_decode_like_the_later_shape() {
    let later = ANP_V011
        .replace(
            "    - namespaces:\n        namespaceSelector:\n          matchLabels:\n            kubernetes.io/metadata.name: monitoring\n",
            "    - namespaces:\n        matchLabels:\n          kubernetes.io/metadata.name: monitoring\n",
        )
        .replace(
            "        namespaces:\n          namespaceSelector:\n            matchLabels:\n              team: b\n",
            "        namespaceSelector:\n          matchLabels:\n            team: b\n",
        )
        .replace(
            "        namespaces:\n          namespaceSelector: {}\n",
            "        namespaceSelector: {}\n",
        );
    assert_ne!(later, ANP_V011, "the rewrite must change the text");
    assert!(!later.contains("namespaces:\n        namespaceSelector"));
    let a = load_one(ANP_V011);
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    let b = load_one(&later);
    assert!(b.errors.is_empty(), "{:?}", b.errors);
    let pa = &a.cluster.cluster_policies["AdminNetworkPolicy/v011"];
    let pb = &b.cluster.cluster_policies["AdminNetworkPolicy/v011"];
    assert_eq!(pa, pb, "both shapes mean the same policy");
    assert_eq!(
        pa.ingress[0].peers,
        vec![
            ClusterPeer::Namespaces(sel(&[("kubernetes.io/metadata.name", "monitoring")])),
            ClusterPeer::Pods {
                namespaces: sel(&[("team", "b")]),
                pods: sel(&[("app", "scraper")]),
            },
        ]
    );
    assert_eq!(
        pa.egress[0].peers,
        vec![ClusterPeer::Pods {
            namespaces: LabelSelector::everything(),
            pods: sel(&[("app", "db")]),
        }]
    );
}

#[test]
fn banp_peers_in_the_v0_1_1_shape_decode() {
    let l = load_one(
        "apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata:
  name: default
spec:
  subject:
    namespaces:
      matchLabels:
        team: a
  ingress:
  - action: Deny
    from:
    - namespaces:
        namespaceSelector: {}
  egress:
  - action: Allow
    to:
    - pods:
        namespaces:
          namespaceSelector:
            matchLabels:
              team: a
        podSelector: {}
",
    );
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let b = &l.cluster.cluster_policies["BaselineAdminNetworkPolicy/default"];
    assert_eq!(
        b.ingress[0].peers,
        vec![ClusterPeer::Namespaces(LabelSelector::everything())]
    );
    assert_eq!(
        b.egress[0].peers,
        vec![ClusterPeer::Pods {
            namespaces: sel(&[("team", "a")]),
            pods: LabelSelector::everything(),
        }]
    );
}

#[test]
fn v0_1_1_peer_shapes_that_palisade_cannot_honour_reject_that_policy_alone() {
    let base = "priority: 1, subject: {namespaces: {}}";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "sameLabels is not supported",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{{base}, ingress: [{{action: Allow, from: [{{namespaces: {{sameLabels: [tenant]}}}}]}}]}}")),
            vec!["spec.ingress[0].from[0].namespaces.sameLabels"],
        ),
        (
            "notSameLabels is not supported, in pods too",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{{base}, egress: [{{action: Deny, to: [{{pods: {{namespaces: {{notSameLabels: [tenant]}}, podSelector: {{}}}}}}]}}]}}")),
            vec!["spec.egress[0].to[0].pods.namespaces.notSameLabels"],
        ),
        (
            "sameLabels in BANP",
            anp_yaml("BaselineAdminNetworkPolicy", "default", "{subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {sameLabels: [tenant]}}]}]}"),
            vec!["spec.ingress[0].from[0].namespaces.sameLabels"],
        ),
        (
            "two NamespacedPeer fields",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{{base}, ingress: [{{action: Allow, from: [{{namespaces: {{namespaceSelector: {{}}, sameLabels: [tenant]}}}}]}}]}}")),
            vec!["spec.ingress[0].from[0].namespaces"],
        ),
        (
            "the two shapes mixed",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{{base}, ingress: [{{action: Allow, from: [{{namespaces: {{namespaceSelector: {{}}, matchLabels: {{a: b}}}}}}]}}]}}")),
            vec!["spec.ingress[0].from[0].namespaces"],
        ),
        (
            "pods with namespaces and namespaceSelector",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{{base}, ingress: [{{action: Allow, from: [{{pods: {{namespaces: {{namespaceSelector: {{}}}}, namespaceSelector: {{}}, podSelector: {{}}}}}}]}}]}}")),
            vec!["spec.ingress[0].from[0].pods"],
        ),
        (
            "empty NamespacedPeer in pods",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{{base}, ingress: [{{action: Allow, from: [{{pods: {{namespaces: {{}}, podSelector: {{}}}}}}]}}]}}")),
            vec!["spec.ingress[0].from[0].pods.namespaces"],
        ),
        (
            "v0.1.1 pods without podSelector",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{{base}, ingress: [{{action: Allow, from: [{{pods: {{namespaces: {{namespaceSelector: {{}}}}}}}}]}}]}}")),
            vec!["spec.ingress[0].from[0].pods.podSelector"],
        ),
        (
            "unknown key in a peer's namespaces",
            anp_yaml("AdminNetworkPolicy", "a", &format!("{{{base}, ingress: [{{action: Allow, from: [{{namespaces: {{namespaceSelecter: {{}}}}}}]}}]}}")),
            vec!["spec.ingress[0].from[0].namespaces.namespaceSelecter"],
        ),
        (
            "v0.1.1 shape in v1alpha2",
            cnp_yaml("{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {namespaceSelector: {}}}]}]}"),
            vec!["spec.ingress[0].from[0].namespaces.namespaceSelector"],
        ),
        (
            "v0.1.1 pods shape in v1alpha2",
            cnp_yaml("{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{pods: {namespaces: {namespaceSelector: {}}, podSelector: {}}}]}]}"),
            vec!["spec.ingress[0].from[0].pods.namespaces.namespaceSelector"],
        ),
    ];
    for (rule, yaml, want) in cases {
        let good = anp_yaml("AdminNetworkPolicy", "good", "{priority: 2, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {namespaceSelector: {}}}]}]}");
        let l = load_one(&format!("{yaml}---\n{good}"));
        assert_eq!(error_fields(&l), want, "{rule}: {:?}", l.errors);
        let names: Vec<&String> = l.cluster.cluster_policies.keys().collect();
        assert_eq!(
            names,
            vec!["AdminNetworkPolicy/good"],
            "{rule}: only the bad policy is rejected"
        );
    }
}

#[test]
fn remove_object_takes_out_exactly_the_named_object_as_if_its_document_were_absent() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: default}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: default}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default}\nspec: {containers: [{name: c, image: x}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\nspec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: x}]}}}\n";
    let mut l = load_one(text);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert!(l.remove_object("NetworkPolicy default/a"));
    assert!(!l.cluster.network_policies.contains_key("default/a"));
    assert!(l.cluster.network_policies.contains_key("default/b"));
    assert!(l.remove_object("Pod default/p"));
    assert!(!l.cluster.pods.contains_key("default/p"));
    assert!(l.remove_object("Deployment default/web"));
    let sim = l.simulate_pods();
    assert!(sim.workloads.is_empty(), "{sim:?}");
    assert!(!l.remove_object("NetworkPolicy default/a"), "already gone");
    assert!(!l.remove_object("NetworkPolicy default/nope"));
}
