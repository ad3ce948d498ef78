//! Decoding Calico objects: defaults, strictness, and the fields Palisade refuses.

use super::*;
use crate::model::{CalicoAction, CalicoPort, Direction, Protocol};

fn load_one(text: &str) -> Loaded {
    load(&[("t.yaml".to_string(), text.to_string())])
}

/// A Calico NetworkPolicy `x/p` with the given spec (YAML, indented two spaces).
fn cnp(api: &str, spec: &str) -> String {
    format!("apiVersion: {api}\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\nspec:\n{spec}")
}

const KEY: &str = "NetworkPolicy.projectcalico.org/x/p";

/// `(field, message)` of every error.
fn errors(l: &Loaded) -> Vec<(String, String)> {
    l.errors
        .iter()
        .map(|e| (e.field().unwrap_or("").to_string(), e.message().to_string()))
        .collect()
}

#[test]
fn both_api_versions_decode_with_calicos_defaults() {
    for api in ["projectcalico.org/v3", "crd.projectcalico.org/v1"] {
        let l = load_one(&cnp(
            api,
            "  egress:\n  - action: Allow\n    protocol: TCP\n    destination:\n      ports: [80, \"8080:8090\", http]\n",
        ));
        assert!(l.errors.is_empty(), "{api}: {:?}", l.errors);
        let p = &l.cluster.calico_policies[KEY];
        // No selector: all(); types from the rules present: Egress only.
        assert_eq!(p.selector.text, "all()");
        assert!(p.rules(Direction::Ingress).is_none());
        let r = &p.rules(Direction::Egress).unwrap()[0];
        assert_eq!(r.action, CalicoAction::Allow);
        assert_eq!(r.protocol, Some(Protocol::Tcp));
        assert_eq!(
            r.ports,
            vec![
                CalicoPort::Range(80, 80),
                CalicoPort::Range(8080, 8090),
                CalicoPort::Named("http".into())
            ]
        );
    }
}

#[test]
fn an_unknown_field_is_an_error_naming_it_and_its_line() {
    let l = load_one(&cnp(
        "projectcalico.org/v3",
        "  selector: all()\n  egress:\n  - action: Allow\n    destination:\n      netz: [10.0.0.0/8]\n",
    ));
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    let e = &l.errors[0];
    assert_eq!(e.field(), Some("spec.egress[0].destination.netz"));
    assert!(e.message().contains("did you mean nets"), "{e}");
    assert_eq!(e.position().map(|p| p.line), Some(11), "{e}");
    assert!(e.to_string().starts_with("t.yaml:11:"), "{e}");
    assert!(l.cluster.calico_policies.is_empty());
}

#[test]
fn a_bad_selector_names_the_field_and_column() {
    let l = load_one(&cnp("projectcalico.org/v3", "  selector: app == 'a' &&\n"));
    let errs = errors(&l);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "spec.selector");
    assert!(errs[0].1.contains("column 14"), "{errs:?}");
}

#[test]
fn what_palisade_does_not_enforce_is_refused_naming_the_field_and_only_that_policy() {
    for (spec, field) in [
        ("  tier: security\n", "spec.tier"),
        ("  doNotTrack: true\n", "spec.doNotTrack"),
        ("  preDNAT: true\n", "spec.preDNAT"),
        ("  applyOnForward: true\n", "spec.applyOnForward"),
        ("  serviceAccountSelector: role ==\n", "spec.serviceAccountSelector"),
        ("  ingress:\n  - action: Allow\n    http: {methods: [GET]}\n", "spec.ingress[0].http"),
        ("  ingress:\n  - action: Allow\n    protocol: ICMP\n    icmp: {type: 8}\n", "spec.ingress[0].icmp"),
        ("  ingress:\n  - action: Allow\n    protocol: ICMP\n", "spec.ingress[0].protocol"),
        ("  ingress:\n  - action: Deny\n    notProtocol: 1\n", "spec.ingress[0].notProtocol"),
        ("  ingress:\n  - action: Allow\n    notICMP: {type: 8}\n    protocol: ICMP\n", "spec.ingress[0].notICMP"),
        ("  ingress:\n  - action: Allow\n    destination: {serviceAccounts: {names: [a]}}\n", "spec.ingress[0].destination.serviceAccounts"),
        ("  ingress:\n  - action: Allow\n    source: {serviceAccounts: {names: [Not_A_Name]}}\n", "spec.ingress[0].source.serviceAccounts.names[0]"),
        ("  ingress:\n  - action: Allow\n    source: {serviceAccounts: {selector: 'a =='}}\n", "spec.ingress[0].source.serviceAccounts.selector"),
        ("  ingress:\n  - action: Allow\n    source: {serviceAccounts: {name: [a]}}\n", "spec.ingress[0].source.serviceAccounts.name"),
        ("  egress:\n  - action: Allow\n    destination: {services: {name: k}, serviceAccounts: {names: [a]}}\n", "spec.egress[0].destination.serviceAccounts"),
        ("  egress:\n  - action: Allow\n    source: {selector: app == 'a'}\n", "spec.egress[0].source.selector"),
        ("  ingress:\n  - action: Allow\n    destination: {nets: [10.0.0.0/8]}\n", "spec.ingress[0].destination.nets"),
        ("  ingress:\n  - action: Allow\n    protocol: TCP\n    source: {ports: [1000]}\n", "spec.ingress[0].source.ports"),
        ("  ingress:\n  - action: Allow\n    destination: {ports: [80]}\n", "spec.ingress[0].protocol"),
        ("  egress:\n  - action: Allow\n    destination: {services: {name: k}, nets: [10.0.0.0/8]}\n", "spec.egress[0].destination.nets"),
        ("  egress:\n  - action: Allow\n    destination: {nets: [10.0.0.0/8, 'fd00::/8']}\n", "spec.egress[0].destination.nets"),
        ("  egress:\n  - action: Allow\n  types: [Ingress]\n", "spec.egress"),
        ("  egress:\n  - action: Permit\n", "spec.egress[0].action"),
    ] {
        let good = "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: good, namespace: x}\nspec: {selector: all()}\n";
        let text = format!("{}{good}", cnp("projectcalico.org/v3", spec));
        let l = load_one(&text);
        let errs = errors(&l);
        assert!(
            errs.iter().any(|(f, _)| f == field),
            "{spec}: expected an error at {field}, got {errs:?}"
        );
        assert!(!l.cluster.calico_policies.contains_key(KEY), "{spec}: rejected");
        assert!(
            l.cluster
                .calico_policies
                .contains_key("NetworkPolicy.projectcalico.org/x/good"),
            "{spec}: the other policy still loads"
        );
    }
}

#[test]
fn staged_policies_are_refused() {
    let l = load_one("apiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\nmetadata: {name: s, namespace: x}\nspec: {}\n");
    let errs = errors(&l);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].1.contains("staged"), "{errs:?}");
}

#[test]
fn namespace_selector_is_a_global_network_policy_field_only() {
    let l = load_one(&cnp("projectcalico.org/v3", "  namespaceSelector: all()\n"));
    assert_eq!(errors(&l)[0].0, "spec.namespaceSelector");
    let g = load_one("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec: {namespaceSelector: has(team), order: 1}\n");
    assert!(g.errors.is_empty(), "{:?}", g.errors);
    let p = &g.cluster.calico_policies["GlobalNetworkPolicy.projectcalico.org/g"];
    assert_eq!(p.namespace_selector.as_ref().unwrap().text, "has(team)");
    // No rules and no types: Ingress.
    assert!(p.ingress.is_some() && p.egress.is_none());
}

#[test]
fn network_sets_decode_with_labels_and_bare_addresses() {
    let l = load_one("apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: s, namespace: x, labels: {k: v}}\nspec: {nets: [192.0.2.1, 198.51.100.0/24]}\n---\napiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkSet\nmetadata: {name: g}\nspec: {nets: ['2001:db8::/32'], extra: 1}\n");
    let errs = errors(&l);
    assert_eq!(
        errs,
        vec![("spec.extra".to_string(), "unknown field".to_string())]
    );
    let s = &l.cluster.network_sets["NetworkSet/x/s"];
    assert_eq!(s.nets[0].to_string(), "192.0.2.1/32");
    assert_eq!(s.labels["k"], "v");
}

#[test]
fn a_rejected_calico_policy_keeps_its_last_good_version() {
    let good = load_one(&cnp("projectcalico.org/v3", "  selector: all()\n"));
    let bad = load_one(&cnp("projectcalico.org/v3", "  selector: all(\n"));
    assert!(!bad.errors.is_empty());
    let mut c = bad.cluster.clone();
    let kept = bad.keep_last_good(&mut c, &good.cluster).unwrap();
    assert_eq!(
        kept,
        vec!["NetworkPolicy.projectcalico.org x/p".to_string()]
    );
    assert!(c.calico_policies.contains_key(KEY));
}

#[test]
fn service_accounts_decode_and_an_empty_match_adds_nothing() {
    let l = load_one(&cnp(
        "projectcalico.org/v3",
        "  serviceAccountSelector: team == 'a'\n  ingress:\n  - action: Allow\n    source: {serviceAccounts: {names: [web, api], selector: \"has(tier)\"}}\n  - action: Deny\n    source: {serviceAccounts: {}}\n",
    ));
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let p = &l.cluster.calico_policies[KEY];
    assert_eq!(
        p.service_account_selector.as_ref().unwrap().text,
        "team == 'a'"
    );
    let rules = p.rules(Direction::Ingress).unwrap();
    let m = rules[0].peer.service_accounts.as_ref().unwrap();
    assert_eq!(m.names, ["web", "api"]);
    assert_eq!(m.selector.as_ref().unwrap().text, "has(tier)");
    // `{}` sets neither field: Calico adds no criterion, so neither does Palisade.
    assert!(rules[1].peer.is_empty(), "{:?}", rules[1].peer);
    // `all()` (and blank) select every service account: no criterion either.
    let all = load_one(&cnp(
        "projectcalico.org/v3",
        "  serviceAccountSelector: all()\n",
    ));
    assert!(all.cluster.calico_policies[KEY]
        .service_account_selector
        .is_none());
}

#[test]
fn service_account_objects_and_pod_service_accounts_load() {
    let l = load_one(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: x, labels: {team: a}}\nsecrets: [{name: web-token}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: x}\nspec: {serviceAccountName: web, serviceAccount: old, containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: x}\nspec: {serviceAccount: old, containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p3, namespace: x}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bad, namespace: x, labels: {'-no': a}}\n",
    );
    let errs = errors(&l);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].0.starts_with("metadata.labels"), "{errs:?}");
    assert_eq!(l.cluster.service_accounts["x/web"].labels["team"], "a");
    assert!(!l.cluster.service_accounts.contains_key("x/bad"));
    let sa = |k: &str| l.cluster.pods[k].service_account.clone();
    assert_eq!(
        (sa("x/p1"), sa("x/p2"), sa("x/p3")),
        ("web".into(), "old".into(), "default".into())
    );
}
