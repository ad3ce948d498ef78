//! Calico semantics table: manifests (as a user writes them) + flow → verdict, one
//! rule per case, each citing the Calico reference page it comes from
//! (docs.tigera.io/calico/latest/reference/resources/...; "rule" is the Rule section
//! shared by networkpolicy and globalnetworkpolicy, "tier" is the Tier resource).
//!
//! Every world has namespaces `x` (`team: blue`) and `y`, pods `x/a` (`app: a`,
//! 10.0.0.1, named port `http` = TCP 8080), `x/b` (`app: b`, `role: db`, 10.0.0.2),
//! `y/c` (`app: c`, 10.0.1.3) and an outside address 192.0.2.9.

use std::net::IpAddr;

use super::*;
use crate::manifest;
use crate::model::Protocol;

const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: blue}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}]
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b, role: db}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: c}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.1.3}
"#;

/// Loads the world plus `extra`; every object must load.
fn world(extra: &str) -> Cluster {
    let text = format!("{WORLD}\n---\n{extra}");
    let loaded = manifest::load(&[("t.yaml".into(), text)]);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    loaded.cluster
}

fn peer(s: &str) -> Peer {
    match s.parse::<IpAddr>() {
        Ok(ip) => Peer::Ip(ip),
        Err(_) => Peer::Pod(s.into()),
    }
}

fn tcp(c: &Cluster, from: &str, to: &str, port: u16) -> Decision {
    evaluate(
        c,
        &Flow::with_protocol(peer(from), peer(to), Protocol::Tcp, port),
    )
}

struct Case {
    rule: &'static str,
    yaml: &'static str,
    from: &'static str,
    to: &'static str,
    port: u16,
    allowed: bool,
}

fn run(cases: &[Case]) {
    for c in cases {
        let cl = world(c.yaml);
        let d = tcp(&cl, c.from, c.to, c.port);
        assert_eq!(
            d.allowed, c.allowed,
            "{}: {} -> {}:{}\n{d:#?}",
            c.rule, c.from, c.to, c.port
        );
    }
}

#[test]
fn calico_semantics_table() {
    run(&[
        Case {
            rule: "networkpolicy `order`: the policy with the lowest value applies first",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {order: 10, selector: app == 'a', egress: [{action: Deny}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow, namespace: x}
spec: {order: 20, selector: app == 'a', egress: [{action: Allow}]}
"#,
            from: "x/a",
            to: "y/c",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "networkpolicy `order`: swapping the orders swaps the outcome",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {order: 20, selector: app == 'a', egress: [{action: Deny}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow, namespace: x}
spec: {order: 10.5, selector: app == 'a', egress: [{action: Allow}]}
"#,
            from: "x/a",
            to: "y/c",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "tier `order`: no value is the highest order, so an unset order comes last",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: aaa-unordered-allow, namespace: x}
spec: {selector: app == 'a', egress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: zzz-deny, namespace: x}
spec: {order: 5000, selector: app == 'a', egress: [{action: Deny}]}
"#,
            from: "x/a",
            to: "y/c",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "Kubernetes NetworkPolicies are order 1000 in the default tier: a Calico Deny at 500 wins over them",
            yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec: {podSelector: {}, ingress: [{}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny-c, namespace: x}
spec: {order: 500, selector: all(), ingress: [{action: Deny, source: {namespaceSelector: projectcalico.org/name == 'y'}}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "Kubernetes NetworkPolicies are order 1000: a Calico Deny at 2000 comes after their Allow",
            yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec: {podSelector: {}, ingress: [{}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny-c, namespace: x}
spec: {order: 2000, selector: all(), ingress: [{action: Deny}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "rule `Pass` skips the rest of the tier: a Kubernetes NetworkPolicy's isolation is skipped too",
            yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass-y}
spec: {order: 1, selector: all(), ingress: [{action: Pass, source: {namespaceSelector: projectcalico.org/name == 'y'}}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "rule `Pass` goes on to the next tier: a BaselineAdminNetworkPolicy then decides",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass-y}
spec: {order: 1, selector: all(), ingress: [{action: Pass}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "tier: an endpoint selected by a policy of the tier is denied at its end when no rule decides",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: only-b, namespace: x}
spec: {selector: app == 'a', ingress: [{action: Allow, source: {selector: app == 'b'}}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "tier: an endpoint no policy selects is not affected by the tier",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: only-b, namespace: x}
spec: {selector: app == 'a', ingress: [{action: Allow, source: {selector: app == 'b'}}]}
"#,
            from: "y/c",
            to: "x/b",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "networkpolicy `types` default: egress rules only means Egress only; ingress is untouched",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec: {selector: all(), egress: [{action: Deny}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "networkpolicy `types` default: no rules at all means Ingress (and denies it at the end of the tier)",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: empty, namespace: x}
spec: {selector: app == 'a'}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "networkpolicy `types` default: no rules means Ingress only, so egress is untouched",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: empty, namespace: x}
spec: {selector: app == 'a'}
"#,
            from: "x/a",
            to: "192.0.2.9",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "entityrule `notNets`: an address outside the listed CIDRs matches",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-internal, namespace: x}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {notNets: [10.0.0.0/8]}}]}
"#,
            from: "x/a",
            to: "192.0.2.9",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "entityrule `notNets`: an address inside them does not match (end-of-tier deny)",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-internal, namespace: x}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {notNets: [10.0.0.0/8]}}]}
"#,
            from: "x/a",
            to: "y/c",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "entityrule `notSelector: has(role)` matches anywhere, outside addresses included, except endpoints with the label",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-db}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {notSelector: has(role)}}]}
"#,
            from: "x/a",
            to: "192.0.2.9",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "entityrule `selector: !has(role)` matches endpoints without the label only, never outside addresses",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-db}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {selector: "!has(role)"}}]}
"#,
            from: "x/a",
            to: "192.0.2.9",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "entityrule `notSelector`: a selected endpoint is excluded",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-db}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {notSelector: has(role)}}]}
"#,
            from: "x/a",
            to: "x/b",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "selectors: `k != 'v'` matches endpoints without the label",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: ne}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {selector: role != 'db'}}]}
"#,
            from: "x/a",
            to: "y/c",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "selector scopes: a NetworkPolicy rule selector without namespaceSelector stays in the policy's namespace",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: same-ns, namespace: x}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {selector: all()}}]}
"#,
            from: "x/a",
            to: "y/c",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "calico automatic labels: `projectcalico.org/name` selects a namespace by name",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: to-y, namespace: x}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {namespaceSelector: projectcalico.org/name == 'y'}}]}
"#,
            from: "x/a",
            to: "y/c",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "calico automatic labels: `projectcalico.org/namespace` on endpoints, in a GlobalNetworkPolicy selector",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-x}
spec: {selector: projectcalico.org/namespace == 'x', ingress: [{action: Deny}]}
"#,
            from: "y/c",
            to: "x/b",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "namespace labels on endpoints as `pcns.<key>` (Calico's namespace profiles)",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: blue}
spec: {selector: app == 'c', egress: [{action: Deny, destination: {selector: pcns.team == 'blue'}}, {action: Allow}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "globalnetworkpolicy `namespaceSelector` limits the pods the policy applies to",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: only-y}
spec: {namespaceSelector: projectcalico.org/name == 'y', selector: all(), ingress: [{action: Deny}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "ports: a named port resolves on the destination endpoint",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: http, namespace: x}
spec: {selector: app == 'a', ingress: [{action: Allow, protocol: TCP, destination: {ports: [http]}}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 8080,
            allowed: true,
        },
        Case {
            rule: "ports: a named port does not match another number",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: http, namespace: x}
spec: {selector: app == 'a', ingress: [{action: Allow, protocol: TCP, destination: {ports: [http]}}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "ports: `start:end` matches start <= x <= end",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec: {selector: app == 'a', ingress: [{action: Allow, protocol: TCP, destination: {ports: ["8080:8090"]}}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 8090,
            allowed: true,
        },
        Case {
            rule: "entityrule `notPorts`: a listed port does not match",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-22, namespace: x}
spec: {selector: app == 'a', ingress: [{action: Allow, protocol: TCP, destination: {notPorts: [22, "6000:6100"]}}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 6050,
            allowed: false,
        },
        Case {
            rule: "rule `notProtocol: UDP` matches TCP",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-udp, namespace: x}
spec: {selector: app == 'a', ingress: [{action: Allow, notProtocol: UDP}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 53,
            allowed: true,
        },
        Case {
            rule: "rule `protocol: 17` (a number) does not match TCP",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: udp, namespace: x}
spec: {selector: app == 'a', ingress: [{action: Allow, protocol: 17}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 53,
            allowed: false,
        },
        Case {
            rule: "rule `Log` continues with the next rule",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: log, namespace: x}
spec: {selector: app == 'a', ingress: [{action: Log}, {action: Deny}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "networkset: a rule selector matches the CIDRs of a network set in scope",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partners, namespace: x, labels: {kind: partner}}
spec: {nets: [192.0.2.0/24]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: partners, namespace: x}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {selector: kind == 'partner'}}]}
"#,
            from: "x/a",
            to: "192.0.2.9",
            port: 443,
            allowed: true,
        },
        Case {
            rule: "selector scopes: a GlobalNetworkSet is out of a NetworkPolicy's scope without global()",
            yaml: r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: partners, labels: {kind: partner}}
spec: {nets: [192.0.2.0/24]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: partners, namespace: x}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {selector: kind == 'partner'}}]}
"#,
            from: "x/a",
            to: "192.0.2.9",
            port: 443,
            allowed: false,
        },
        Case {
            rule: "selector scopes: `namespaceSelector: global()` brings GlobalNetworkSets into scope",
            yaml: r#"
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkSet
metadata: {name: partners, labels: {kind: partner}}
spec: {nets: [192.0.2.0/24]}
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: partners, namespace: x}
spec: {selector: app == 'a', egress: [{action: Allow, destination: {selector: kind == 'partner', namespaceSelector: global()}}]}
"#,
            from: "x/a",
            to: "192.0.2.9",
            port: 443,
            allowed: true,
        },
        Case {
            rule: "AdminNetworkPolicy (Admin tier) comes before Calico's default tier",
            yaml: r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: deny-y}
spec:
  priority: 1
  subject: {namespaces: {matchLabels: {team: blue}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow, namespace: x}
spec: {order: 1, selector: all(), ingress: [{action: Allow}]}
"#,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: false,
        },
    ]);
}

/// The seed-002 policy as printed in the article.
const SEED_002: &str =
    include_str!("../../../../examples/calico-imds-api/01-deny-k8s-api-and-imds.yaml");

/// Its cluster: the selected and an unselected pod, the `kubernetes` Service and its
/// EndpointSlice.
const SEED_CLUSTER: &str = include_str!("../../../../examples/calico-imds-api/00-cluster.yaml");

#[test]
fn seed_002_policy_as_printed_denies_imds_and_the_api_server_and_allows_the_rest() {
    let text = format!("{SEED_CLUSTER}\n---\n{SEED_002}");
    let loaded = manifest::load(&[("seed.yaml".into(), text)]);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    let c = loaded.cluster;
    let sel = "default/manager";
    for (to, port, allowed) in [
        ("169.254.169.254", 80, false),
        ("10.96.0.1", 443, false),
        ("172.18.0.2", 6443, false),
        ("192.0.2.9", 443, true),
        ("default/other", 80, true),
    ] {
        let d = tcp(&c, sel, to, port);
        assert_eq!(d.allowed, allowed, "selected pod -> {to}:{port}: {d:#?}");
    }
    let imds = tcp(&c, sel, "169.254.169.254", 80);
    assert!(matches!(
        imds.egress.unwrap().origin,
        RuleOrigin::Calico {
            index: 0,
            action: CalicoAction::Deny,
            ..
        }
    ));
    let api = tcp(&c, sel, "10.96.0.1", 443);
    assert!(matches!(
        api.egress.unwrap().origin,
        RuleOrigin::Calico {
            index: 1,
            action: CalicoAction::Deny,
            ..
        }
    ));
    // Unselected pods reach both.
    for (to, port) in [
        ("169.254.169.254", 80),
        ("10.96.0.1", 443),
        ("172.18.0.2", 6443),
    ] {
        assert!(tcp(&c, "default/other", to, port).allowed, "other -> {to}");
    }
}

#[test]
fn seed_002_follows_the_api_servers_endpoint_address() {
    // The API server moves: the EndpointSlice names a new address. The same policy now
    // denies the new address and no longer the old one, with nothing else changed.
    let moved = SEED_CLUSTER.replace("  - 172.18.0.2", "  - 172.18.0.7");
    let text = format!("{moved}\n---\n{SEED_002}");
    let loaded = manifest::load(&[("seed.yaml".into(), text)]);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    let c = loaded.cluster;
    assert!(!tcp(&c, "default/manager", "172.18.0.7", 6443).allowed);
    assert!(tcp(&c, "default/manager", "172.18.0.2", 6443).allowed);
}

#[test]
fn explain_steps_name_the_calico_policy_and_rule() {
    let text = format!("{SEED_CLUSTER}\n---\n{SEED_002}");
    let c = manifest::load(&[("seed.yaml".into(), text)]).cluster;
    let d = tcp(&c, "default/manager", "169.254.169.254", 80);
    let side = d.egress.unwrap();
    let steps: Vec<String> = side.consulted.iter().map(|s| s.to_string()).collect();
    assert!(
        steps.iter().any(|s| s
            .contains("NetworkPolicy.projectcalico.org default/deny-k8s-api-and-imds")
            && s.contains("rule 0 Deny matched")),
        "{steps:#?}"
    );
    assert!(describe(&side.origin).starts_with(
        "denied by NetworkPolicy.projectcalico.org default/deny-k8s-api-and-imds egress rule 0"
    ));
}

/// Pods with service accounts for [`service_account_semantics_table`]: `x/w` runs as
/// `web` (ServiceAccount labelled `team: front`), `y/d` as `web` of namespace `y`
/// (`team: back`), `x/v` (`app: a`) as `api` through the deprecated
/// `spec.serviceAccount`, and `x/s` as `default` while labelling itself with the
/// service account keys Calico uses.
const SA_WORLD: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: x, labels: {team: front}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: y, labels: {team: back}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: api, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: w, namespace: x, labels: {app: w}}
spec: {serviceAccountName: web, containers: [{name: c}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: y, labels: {app: d}}
spec: {serviceAccountName: web, containers: [{name: c}]}
status: {podIP: 10.0.1.4}
---
apiVersion: v1
kind: Pod
metadata: {name: v, namespace: x, labels: {app: a}}
spec: {serviceAccount: api, containers: [{name: c}]}
status: {podIP: 10.0.0.6}
---
apiVersion: v1
kind: Pod
metadata:
  name: s
  namespace: x
  labels: {projectcalico.org/serviceaccount: web, pcsa.team: front, pcsa.projectcalico.org/name: web}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.7}
"#;

/// One case of the service account table: `yaml` on top of [`SA_WORLD`].
fn run_sa(cases: &[Case]) {
    for c in cases {
        let cl = world(&format!("{SA_WORLD}\n---\n{}", c.yaml));
        let d = tcp(&cl, c.from, c.to, c.port);
        assert_eq!(
            d.allowed, c.allowed,
            "{}: {} -> {}:{}\n{d:#?}",
            c.rule, c.from, c.to, c.port
        );
    }
}

/// Ingress to every pod of `x` only from `source`, written as a namespaced policy.
const fn only_from(
    rule: &'static str,
    yaml: &'static str,
    from: &'static str,
    allowed: bool,
) -> Case {
    Case {
        rule,
        yaml,
        from,
        to: "x/a",
        port: 80,
        allowed,
    }
}

#[test]
fn service_account_semantics_table() {
    const NAMES_NP: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sa, namespace: x}
spec: {selector: all(), ingress: [{action: Allow, source: {serviceAccounts: {names: [web]}}}]}
"#;
    const NAMES_GNP: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sa}
spec: {selector: projectcalico.org/namespace == 'x', ingress: [{action: Allow, source: {serviceAccounts: {names: [web]}}}]}
"#;
    const NAMES_NS_SEL: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sa, namespace: x}
spec: {selector: all(), ingress: [{action: Allow, source: {serviceAccounts: {names: [web]}, namespaceSelector: projectcalico.org/name == 'y'}}]}
"#;
    const LABELS_GNP: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sa}
spec: {selector: projectcalico.org/namespace == 'x', ingress: [{action: Allow, source: {serviceAccounts: {selector: team == 'front'}}}]}
"#;
    const NAMES_AND_LABELS: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sa}
spec: {selector: projectcalico.org/namespace == 'x', ingress: [{action: Allow, source: {serviceAccounts: {names: [web], selector: team == 'back'}}}]}
"#;
    const WITH_SELECTOR: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sa, namespace: x}
spec: {selector: all(), ingress: [{action: Allow, source: {selector: app == 'a', serviceAccounts: {names: [api]}}}]}
"#;
    const DEFAULT_SA: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sa, namespace: x}
spec: {selector: app == 'w', ingress: [{action: Allow, source: {serviceAccounts: {names: [default]}}}]}
"#;
    const POLICY_SA_SELECTOR: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sa, namespace: x}
spec: {selector: all(), serviceAccountSelector: team == 'front', ingress: [{action: Deny}]}
"#;
    const POLICY_SA_NAME: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sa, namespace: x}
spec: {serviceAccountSelector: projectcalico.org/name == 'api', ingress: [{action: Deny}]}
"#;
    run_sa(&[
        only_from("serviceAccounts.names: a pod running as the named account matches", NAMES_NP, "x/w", true),
        only_from("serviceAccounts.names: a pod of another account does not", NAMES_NP, "x/b", false),
        only_from("networkpolicy: a namespaced policy's serviceAccounts are limited to its namespace", NAMES_NP, "y/d", false),
        only_from("globalnetworkpolicy: without namespaceSelector, accounts of that name in every namespace", NAMES_GNP, "y/d", true),
        only_from("EntityRule serviceAccounts: with a namespaceSelector, only accounts in the selected namespaces", NAMES_NS_SEL, "y/d", true),
        only_from("EntityRule serviceAccounts: with a namespaceSelector, not the policy's own namespace", NAMES_NS_SEL, "x/w", false),
        only_from("ServiceAccountMatch selector: matches the ServiceAccount's labels", LABELS_GNP, "x/w", true),
        only_from("ServiceAccountMatch selector: another account's labels do not", LABELS_GNP, "y/d", false),
        only_from("ServiceAccountMatch: names and selector must both hold", NAMES_AND_LABELS, "y/d", true),
        only_from("ServiceAccountMatch: names and selector must both hold (label differs)", NAMES_AND_LABELS, "x/w", false),
        only_from("EntityRule: serviceAccounts and selector must both hold", WITH_SELECTOR, "x/v", true),
        only_from("EntityRule: serviceAccounts and selector, the account differs", WITH_SELECTOR, "x/a", false),
        Case {
            rule: "a pod that names no service account runs as `default`",
            yaml: DEFAULT_SA,
            from: "x/b",
            to: "x/w",
            port: 80,
            allowed: true,
        },
        only_from("a pod's own label projectcalico.org/serviceaccount is not its service account", NAMES_NP, "x/s", false),
        only_from("a pod's own pcsa. labels are not its ServiceAccount's labels", LABELS_GNP, "x/s", false),
        Case {
            rule: "serviceAccountSelector: the policy applies to pods whose ServiceAccount matches",
            yaml: POLICY_SA_SELECTOR,
            from: "y/c",
            to: "x/w",
            port: 80,
            allowed: false,
        },
        Case {
            rule: "serviceAccountSelector: other pods are not selected (no policy, allowed)",
            yaml: POLICY_SA_SELECTOR,
            from: "y/c",
            to: "x/a",
            port: 80,
            allowed: true,
        },
        Case {
            rule: "Calico automatic labels: projectcalico.org/name is a ServiceAccount's name",
            yaml: POLICY_SA_NAME,
            from: "y/c",
            to: "x/v",
            port: 80,
            allowed: false,
        },
    ]);
}
