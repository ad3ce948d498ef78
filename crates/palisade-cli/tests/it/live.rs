//! `--live` against a real kube-apiserver (palisade-kube-lab's control plane: etcd,
//! TLS, RBAC, admission; no scheduler, so pods have no address and get the simulated
//! ones, as from files): answers come from what the API server holds, with `-f` files
//! overlaid, and credentials that may not list a kind withhold the answer.

use std::process::Output;

use palisade_kube_lab::{Binaries, ControlPlane, Kubeconfig};
use palisade_testkit::{decide, Context, Decision};

use crate::support::palisade;

fn start() -> Option<ControlPlane> {
    let missing: Vec<String> = Binaries::locate()
        .err()
        .map(|e| e.to_string())
        .into_iter()
        .collect();
    match decide("live cluster", &missing, Context::current()) {
        Decision::Run => Some(ControlPlane::start().expect("control plane starts")),
        Decision::Skip(msg) => {
            eprintln!("{msg}");
            None
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

/// Namespaces x and y (with the `default` ServiceAccount admission needs, as no
/// controller manager runs), pods x/a (port 80) and y/b (port 443), and a deny-all
/// ingress policy in y.
const CLUSTER: &str = r#"{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x","labels":{"team":"x"}}},
 {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"y","labels":{"team":"y"}}},
 {"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"x"}},
 {"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"y"}},
 {"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"x","labels":{"app":"a"}},
  "spec":{"containers":[{"name":"c","image":"lab","ports":[{"containerPort":80}]}]}},
 {"apiVersion":"v1","kind":"Pod","metadata":{"name":"b","namespace":"y","labels":{"app":"b"}},
  "spec":{"containers":[{"name":"c","image":"lab","ports":[{"containerPort":443}]}]}},
 {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny-all","namespace":"y"},
  "spec":{"podSelector":{},"policyTypes":["Ingress"]}}]}"#;

/// Allows x's pods into y on 443: added by the overlay.
const ALLOW: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-x, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: x}}}]
    ports: [{port: 443}]
";

/// The live deny-all, changed to allow everything: replaced by the overlay.
const OPEN_DENY_ALL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{}]
";

/// A deny-all ingress in x: denies y/b -> x/a on 80, allowed today.
const DENY_X: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

/// Everything palisade-reader grants except NetworkPolicies.
const NO_NETWORK_POLICIES: &str = r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole",
 "metadata":{"name":"reader-without-networkpolicies"},
 "rules":[
  {"apiGroups":[""],"resources":["namespaces","nodes","pods","services","serviceaccounts"],"verbs":["get","list"]},
  {"apiGroups":["discovery.k8s.io"],"resources":["endpointslices"],"verbs":["get","list"]},
  {"apiGroups":["policy.networking.k8s.io"],"resources":["clusternetworkpolicies","adminnetworkpolicies","baselineadminnetworkpolicies"],"verbs":["get","list"]},
  {"apiGroups":["projectcalico.org","crd.projectcalico.org"],"resources":["networkpolicies","globalnetworkpolicies","networksets","globalnetworksets"],"verbs":["get","list"]}]}"#;

fn bind(cp: &ControlPlane, role: &str, sa: &str) {
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": sa},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "default"}],
    });
    cp.kubectl(
        cp.admin(),
        &["apply", "-f", "-"],
        Some(&binding.to_string()),
    )
    .expect("binding");
}

fn live(kc: &Kubeconfig, args: &[&str]) -> Output {
    palisade()
        .args(args)
        .arg("--kubeconfig")
        .arg(kc.path())
        .output()
        .expect("running palisade")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn live_answers_come_from_the_api_server_with_files_overlaid_and_need_every_kind() {
    let Some(cp) = start() else { return };
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(CLUSTER))
        .expect("cluster objects");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let (allow, open, deny_x) = (
        file("allow.yaml", ALLOW),
        file("open.yaml", OPEN_DENY_ALL),
        file("deny-x.yaml", DENY_X),
    );
    let ask = ["explain", "--from", "x/a", "--to", "y/b", "--port", "443"];

    // The cluster's reader role (deploy/rbac/palisade-reader.yaml) is enough.
    let role =
        std::fs::read_to_string(crate::support::repo().join("deploy/rbac/palisade-reader.yaml"))
            .unwrap();
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&role))
        .expect("palisade-reader");
    let reader = cp
        .service_account_kubeconfig("default", "reviewer")
        .expect("reviewer token");
    bind(&cp, "palisade-reader", "reviewer");

    let o = live(&reader, &ask);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("x/a -> y/b TCP/443: DENIED"), "{out}");
    assert!(
        out.contains("isolated for ingress by policies y/deny-all"),
        "the live policy is named: {out}"
    );
    assert!(
        out.contains("the files replaced 0 and added 0"),
        "what came from where is said: {out}"
    );
    assert!(
        out.contains("no ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy CRD"),
        "{out}"
    );

    let o = live(&reader, &[&ask[..], &["-f", &allow]].concat());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("x/a -> y/b TCP/443: ALLOWED"), "{out}");
    assert!(out.contains("allow-x"), "{out}");
    assert!(out.contains("the files replaced 0 and added 1"), "{out}");

    let o = live(&reader, &[&ask[..], &["-f", &open]].concat());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("x/a -> y/b TCP/443: ALLOWED"), "{out}");
    assert!(out.contains("the files replaced 1 and added 0"), "{out}");
    assert!(
        !err.contains("duplicate object"),
        "an overlay is no duplicate: {err}"
    );

    // The cluster is today; the files are the change. Nothing on the API server changes.
    let o = live(&reader, &["diff", "--live", "-f", &deny_x]);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a change that denies: {out}\n{err}"
    );
    assert!(out.contains("y/b -> x/a"), "{out}");
    let o = live(&reader, &["diff", "-f", &allow]);
    assert_eq!(o.status.code(), Some(5), "only allows more: {:?}", text(&o));
    let listed = cp
        .kubectl(
            cp.admin(),
            &["get", "networkpolicies", "-A", "-o", "name"],
            None,
        )
        .unwrap();
    assert_eq!(listed.trim(), "networkpolicy.networking.k8s.io/deny-all");

    let o = live(&reader, &["validate"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    // Credentials that may not list NetworkPolicies: no answer, the kind named first.
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(NO_NETWORK_POLICIES))
        .expect("role");
    let blind = cp
        .service_account_kubeconfig("default", "blind")
        .expect("blind token");
    bind(&cp, "reader-without-networkpolicies", "blind");
    let o = live(&blind, &ask);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(out.is_empty(), "no answer is printed: {out}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("INCOMPLETE") && first.contains("NetworkPolicy (networking.k8s.io/v1"),
        "{err}"
    );
    let o = live(&blind, &["diff", "--live", "-f", &deny_x]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    let o = live(&blind, &["validate"]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    // With --ignore-invalid the answer comes, opened by what it leaves out.
    let o = live(&blind, &[&ask[..], &["--ignore-invalid"]].concat());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.contains("INCOMPLETE") && l.contains("NetworkPolicy")),
        "{out}"
    );
    assert!(out.contains("ALLOWED"), "without the policy: {out}");
}
