//! Random Calico objects for the compiler's property tests (`tests.rs` mixes them into
//! every random cluster), and unit tests of Calico constructs in the compiled form.

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use crate::calico_selector::CalicoSelector;
use crate::model::{
    CalicoAction, CalicoEntity, CalicoKind, CalicoPolicy, CalicoPort, CalicoRule, Cluster,
    EndpointSlice, NetworkSet, Order, Protocol, Service, ServiceAccount, ServiceAccountMatch,
    ServiceRef,
};

/// Selectors over the labels the random pods carry (`app`, `tier` in `a`/`b`), the
/// Calico automatic labels, namespace labels and network-set labels.
const SELECTORS: [&str; 14] = [
    "all()",
    "app == 'a'",
    "app != 'b'",
    "has(tier)",
    "!has(app)",
    "app in {'a', 'b'} && tier not in {'a'}",
    "tier == 'b' || app == 'b'",
    "projectcalico.org/namespace == 'ns1'",
    "pcns.app == 'a'",
    "kind == 'partner'",
    "has(kind) || app == 'a'",
    "!all()",
    "projectcalico.org/serviceaccount == 'sa-a'",
    "pcsa.team == 'x' || app == 'b'",
];

/// The service accounts random pods run under ([`crate::compile::tests`]' `arb_pod`).
pub(super) const SERVICE_ACCOUNTS: [&str; 3] = ["default", "sa-a", "sa-b"];

/// Selectors over ServiceAccount labels (`team` in `x`/`y`) and Calico's automatic
/// `projectcalico.org/name`; `!has(team)` also matches network sets and pods whose
/// ServiceAccount object is unknown, as in Calico.
const SA_SELECTORS: [&str; 5] = [
    "team == 'x'",
    "!has(team)",
    "all()",
    "projectcalico.org/name == 'sa-b'",
    "team in {'x', 'y'} && projectcalico.org/name != 'default'",
];

fn arb_sa_match() -> impl Strategy<Value = ServiceAccountMatch> {
    (
        prop::sample::subsequence(&SERVICE_ACCOUNTS[..], 0..=2),
        arb_opt_sel(&SA_SELECTORS),
    )
        .prop_filter_map(
            "an empty match is dropped by decoding",
            |(names, selector)| {
                (!names.is_empty() || selector.is_some()).then(|| ServiceAccountMatch {
                    names: names.iter().map(|n| n.to_string()).collect(),
                    selector,
                })
            },
        )
}

/// ServiceAccount objects for some of the random pods' accounts, labelled `team: x|y`
/// or not at all (an account without an object is a pod's too: no `pcsa.` labels).
pub(super) fn arb_service_accounts() -> impl Strategy<Value = Vec<ServiceAccount>> {
    let sa = (
        prop::sample::select(&["ns0", "ns1", "ns2"][..]),
        prop::sample::select(&SERVICE_ACCOUNTS[..]),
        prop::sample::select(&[None, Some("x"), Some("y")][..]),
    )
        .prop_map(|(ns, name, team)| ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
            labels: team
                .map(|t| [("team".to_string(), t.to_string())].into())
                .unwrap_or_default(),
        });
    proptest::collection::vec(sa, 0..=5)
}

const NS_SELECTORS: [&str; 5] = [
    "all()",
    "projectcalico.org/name == 'ns0'",
    "has(app)",
    "global()",
    "global() || projectcalico.org/name == 'ns2'",
];

const NETS: [&str; 7] = [
    "10.0.0.0/30",
    "10.0.0.0/8",
    "192.168.1.0/24",
    "169.254.169.254/32",
    "10.0.0.3/32",
    "fd00::/126",
    "0.0.0.0/0",
];

/// The Service every random `services` rule names, in namespace `ns0`.
pub(super) const SERVICE: (&str, &str) = ("ns0", "svc");
/// Its cluster IP.
pub(super) const CLUSTER_IP: &str = "10.96.0.1";

fn sel(text: &str) -> CalicoSelector {
    CalicoSelector::parse(text).expect("test selectors parse")
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

fn arb_opt_sel(list: &'static [&'static str]) -> impl Strategy<Value = Option<CalicoSelector>> {
    prop_oneof![
        2 => Just(None),
        1 => prop::sample::select(list).prop_map(|s| Some(sel(s))),
    ]
}

fn arb_entity() -> impl Strategy<Value = CalicoEntity> {
    let v4: Vec<&'static str> = NETS.iter().copied().filter(|n| !n.contains(':')).collect();
    (
        prop::sample::subsequence(v4.clone(), 0..=1),
        prop::sample::subsequence(v4, 0..=1),
        arb_opt_sel(&SELECTORS),
        arb_opt_sel(&SELECTORS),
        arb_opt_sel(&NS_SELECTORS),
        prop::bool::weighted(0.15),
        prop::option::weighted(0.3, arb_sa_match()),
    )
        .prop_map(|(n, nn, s, ns, nss, service, sas)| {
            if service {
                return CalicoEntity {
                    service: Some(ServiceRef {
                        namespace: SERVICE.0.into(),
                        name: SERVICE.1.into(),
                    }),
                    ..CalicoEntity::default()
                };
            }
            CalicoEntity {
                nets: nets(&n),
                not_nets: nets(&nn),
                selector: s,
                not_selector: ns,
                namespace_selector: nss,
                service: None,
                service_accounts: sas,
            }
        })
}

fn arb_protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        3 => Just(Protocol::Tcp),
        1 => Just(Protocol::Udp),
        1 => Just(Protocol::Sctp)
    ]
}

fn arb_calico_ports() -> impl Strategy<Value = Vec<CalicoPort>> {
    let port = prop_oneof![
        prop::sample::select(&[53u16, 80, 443, 8080][..]).prop_map(|p| CalicoPort::Range(p, p)),
        Just(CalicoPort::Range(79, 90)),
        Just(CalicoPort::Range(8000, 9000)),
        prop::sample::select(&["http", "dns", "metrics"][..])
            .prop_map(|n| CalicoPort::Named(n.into())),
    ];
    proptest::collection::vec(port, 0..=2)
}

fn arb_rule() -> impl Strategy<Value = CalicoRule> {
    (
        prop_oneof![
            3 => Just(CalicoAction::Allow),
            3 => Just(CalicoAction::Deny),
            1 => Just(CalicoAction::Pass),
            1 => Just(CalicoAction::Log),
        ],
        prop::option::weighted(0.5, arb_protocol()),
        prop::option::weighted(0.15, arb_protocol()),
        prop_oneof![2 => Just(CalicoEntity::default()), 3 => arb_entity()],
        arb_calico_ports(),
        arb_calico_ports(),
    )
        .prop_map(|(action, protocol, not_protocol, peer, ports, not_ports)| {
            // Ports only with a protocol, as decoding requires.
            let (ports, not_ports) = match protocol {
                Some(_) => (ports, not_ports),
                None => (Vec::new(), Vec::new()),
            };
            CalicoRule {
                action,
                protocol,
                not_protocol,
                peer,
                ports,
                not_ports,
            }
        })
}

fn arb_rules() -> impl Strategy<Value = Option<Vec<CalicoRule>>> {
    prop_oneof![
        1 => Just(None),
        3 => proptest::collection::vec(arb_rule(), 0..=3).prop_map(Some),
    ]
}

/// A Calico NetworkPolicy in one of the random namespaces, or a GlobalNetworkPolicy.
pub(super) fn arb_calico_policy() -> impl Strategy<Value = CalicoPolicy> {
    (
        prop::option::weighted(0.6, prop::sample::select(&["ns0", "ns1", "ns2"][..])),
        0..3usize,
        prop::sample::select(&[None, Some(10.0), Some(1000.0), Some(1000.5), Some(2000.0)][..]),
        prop::sample::select(&SELECTORS[..7]),
        arb_opt_sel(&NS_SELECTORS[..3]),
        arb_rules(),
        arb_rules(),
        prop::option::weighted(0.25, prop::sample::select(&SA_SELECTORS[..])),
    )
        .prop_map(|(ns, i, order, s, nss, ingress, egress, sas)| {
            let (kind, namespace_selector) = match ns {
                Some(_) => (CalicoKind::NetworkPolicy, None),
                None => (CalicoKind::GlobalNetworkPolicy, nss),
            };
            // A policy without either direction would select nothing: default Ingress.
            let ingress = if ingress.is_none() && egress.is_none() {
                Some(Vec::new())
            } else {
                ingress
            };
            CalicoPolicy {
                kind,
                namespace: ns.map(str::to_string),
                // Names around `knp.default.np<i>` so that ties at order 1000 interleave
                // with NetworkPolicies.
                name: ["calico", "knp.default.np1", "zz"][i].to_string(),
                order: order.map(Order),
                selector: sel(s),
                service_account_selector: sas.map(sel),
                namespace_selector,
                ingress,
                egress,
            }
        })
}

/// Network sets: namespaced or global, labelled `kind: partner` or not.
pub(super) fn arb_network_sets() -> impl Strategy<Value = Vec<NetworkSet>> {
    let set = (
        prop::option::weighted(0.5, prop::sample::select(&["ns0", "ns1"][..])),
        any::<bool>(),
        prop::sample::subsequence(&NETS[..6], 1..=2),
        0..2usize,
    )
        .prop_map(|(ns, partner, n, i)| NetworkSet {
            namespace: ns.map(str::to_string),
            name: format!("set{i}"),
            labels: if partner {
                [("kind".to_string(), "partner".to_string())].into()
            } else {
                [("kind".to_string(), "other".to_string())].into()
            },
            nets: nets(&n),
        });
    proptest::collection::vec(set, 0..=2)
}

/// The Service `ns0/svc` and its EndpointSlice with some of `candidates` as addresses.
pub(super) fn arb_service(
    candidates: Vec<IpAddr>,
) -> impl Strategy<Value = (Service, EndpointSlice)> {
    prop::sample::subsequence(candidates.clone(), 0..=candidates.len().min(2)).prop_map(|addrs| {
        (
            Service {
                namespace: SERVICE.0.into(),
                name: SERVICE.1.into(),
                selector: None,
                cluster_ips: vec![CLUSTER_IP.parse().unwrap()],
                ports: Vec::new(),
                service_type: Default::default(),
                external_ips: Vec::new(),
                load_balancer_ips: Vec::new(),
                affinity_timeout: None,
            },
            EndpointSlice {
                namespace: SERVICE.0.into(),
                name: "svc-1".into(),
                service_name: Some(SERVICE.1.into()),
                addresses: addrs,
                terminating: Vec::new(),
                ports: Vec::new(),
            },
        )
    })
}

/// Adds the Calico part of a random cluster.
pub(super) fn add_to(
    c: &mut Cluster,
    policies: Vec<CalicoPolicy>,
    sets: Vec<NetworkSet>,
    svc: Option<(Service, EndpointSlice)>,
    sas: Vec<ServiceAccount>,
) {
    for sa in sas {
        c.service_accounts.insert(sa.key(), sa);
    }
    for p in policies {
        c.calico_policies.insert(p.key(), p);
    }
    for s in sets {
        c.network_sets.insert(s.key(), s);
    }
    if let Some((svc, es)) = svc {
        c.services
            .insert(format!("{}/{}", svc.namespace, svc.name), svc);
        c.endpoint_slices
            .insert(format!("{}/{}", es.namespace, es.name), es);
    }
}

/// Probe addresses the Calico parts add: the cluster IP, network-set edges.
pub(super) fn probe_addresses() -> Vec<IpAddr> {
    ["10.96.0.1", "192.168.1.200", "10.0.0.3", "fd00::3"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
}

/// Probe ports the Calico parts add.
pub(super) fn probe_ports(c: &Cluster) -> Vec<u16> {
    let mut out = Vec::new();
    for p in c.calico_policies.values() {
        for r in p.ingress.iter().chain(&p.egress).flatten() {
            for port in r.ports.iter().chain(&r.not_ports) {
                if let CalicoPort::Range(lo, hi) = port {
                    out.extend([*lo, *hi, lo.saturating_sub(1), hi.saturating_add(1)]);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod unit {
    use super::super::compile;
    use super::super::tests::compare_with_oracle;
    use crate::manifest;

    /// Loads manifests; every object must load.
    fn cluster(text: &str) -> crate::model::Cluster {
        let l = manifest::load(&[("t.yaml".into(), text.to_string())]);
        assert!(l.errors.is_empty(), "{:#?}", l.errors);
        l.cluster
    }

    /// Pods `x/w` (account `web`), `x/o` (`default`), both `app: a`, and `x/db`.
    const SA_PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: w, namespace: x, labels: {app: a}}\nspec: {serviceAccountName: web, containers: [{name: c}]}\nstatus: {podIP: 10.0.0.5}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: o, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.6}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: x, labels: {app: db}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.7}\n";

    fn verdict(c: &crate::compiled::Compiled, from: &str) -> crate::compiled::TableAction {
        let ep = &c.endpoints["x/db"];
        c.lookup(
            ep.ingress,
            c.lookup_identity(from.parse().unwrap()),
            6,
            5432,
        )
        .action
    }

    #[test]
    fn service_accounts_split_identities_only_while_a_calico_policy_exists() {
        use crate::compiled::TableAction;
        let plain = compile(&cluster(SA_PODS));
        let id = |c: &crate::compiled::Compiled, ip: &str| c.lookup_identity(ip.parse().unwrap());
        assert_eq!(
            id(&plain, "10.0.0.5"),
            id(&plain, "10.0.0.6"),
            "without Calico policies the account does not split identities"
        );
        let policy = "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: db, namespace: x}\nspec: {selector: app == 'db', ingress: [{action: Allow, protocol: TCP, source: {serviceAccounts: {names: [web]}}, destination: {ports: [5432]}}]}\n";
        let c = cluster(&format!("{SA_PODS}{policy}"));
        let compiled = compile(&c);
        assert_eq!(compare_with_oracle(&c, &compiled), Ok(()));
        assert_ne!(id(&compiled, "10.0.0.5"), id(&compiled, "10.0.0.6"));
        assert_eq!(verdict(&compiled, "10.0.0.5"), TableAction::Allow);
        assert_eq!(verdict(&compiled, "10.0.0.6"), TableAction::Deny);
    }

    #[test]
    fn a_service_account_label_change_moves_the_compiled_verdict() {
        use crate::compile::{Change, Compiler};
        use crate::compiled::TableAction;
        use crate::model::ServiceAccount;
        let policy = "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: db, namespace: x}\nspec: {selector: app == 'db', ingress: [{action: Allow, protocol: TCP, source: {serviceAccounts: {selector: team == 'pay'}}, destination: {ports: [5432]}}]}\n";
        let mut comp = Compiler::new(cluster(&format!("{SA_PODS}{policy}")));
        assert_eq!(verdict(comp.compiled(), "10.0.0.5"), TableAction::Deny);
        let sa = ServiceAccount {
            namespace: "x".into(),
            name: "web".into(),
            labels: [("team".to_string(), "pay".to_string())].into(),
        };
        let delta = comp.apply(Change::UpsertServiceAccount(sa));
        assert!(!delta.ops.is_empty());
        assert_eq!(verdict(comp.compiled(), "10.0.0.5"), TableAction::Allow);
        assert_eq!(verdict(comp.compiled(), "10.0.0.6"), TableAction::Deny);
        assert_eq!(compare_with_oracle(comp.cluster(), comp.compiled()), Ok(()));
        comp.apply(Change::RemoveServiceAccount("x/web".into()));
        assert_eq!(verdict(comp.compiled(), "10.0.0.5"), TableAction::Deny);
    }

    #[test]
    fn seed_002_compiles_to_the_evaluators_verdicts() {
        let c = cluster(&format!(
            "{}\n---\n{}",
            include_str!("../../../../examples/calico-imds-api/00-cluster.yaml"),
            include_str!("../../../../examples/calico-imds-api/01-deny-k8s-api-and-imds.yaml")
        ));
        let compiled = compile(&c);
        assert_eq!(compare_with_oracle(&c, &compiled), Ok(()));
        // And the compiled form really denies the API server's endpoint for the
        // selected pod (so the comparison is not vacuous).
        let ep = &compiled.endpoints["default/manager"];
        let ip: std::net::IpAddr = "172.18.0.2".parse().unwrap();
        let v = compiled.lookup(ep.egress, compiled.lookup_identity(ip), 6, 6443);
        assert_eq!(v.action, crate::compiled::TableAction::Deny);
        let v = compiled.lookup(
            ep.egress,
            compiled.lookup_identity("10.96.0.1".parse().unwrap()),
            6,
            443,
        );
        assert_eq!(v.action, crate::compiled::TableAction::Deny);
        let other = &compiled.endpoints["default/other"];
        let v = compiled.lookup(other.egress, compiled.lookup_identity(ip), 6, 6443);
        assert_eq!(v.action, crate::compiled::TableAction::Allow);
    }
}
