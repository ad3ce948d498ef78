//! `--live` against a real kube-apiserver (palisade-kube-lab's control plane: etcd,
//! TLS, RBAC, admission; no scheduler, so pods have no address and get the simulated
//! ones, as from files): answers come from what the API server holds, with `-f` files
//! overlaid, and credentials that may not list a kind withhold the answer.

use std::process::Output;

use palisade_kube_lab::{Binaries, ControlPlane, Kubeconfig};
use palisade_testkit::{decide, Context, Decision};
use serde_json::{json, Value};

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

/// The JSON document on standard output, after checking the exit code.
fn document(o: &Output, code: i32) -> Value {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(code), "{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
}

/// How many objects of `resource` the API server holds, as kubectl counts them.
fn count(cp: &ControlPlane, resource: &str) -> u64 {
    cp.kubectl(cp.admin(), &["get", resource, "-A", "-o", "name"], None)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

/// The JSON answers of explain, simulate and validate say which cluster they read,
/// how many objects of each kind, and what the files did (docs/output.md, "source").
fn json_names_the_cluster(cp: &ControlPlane, reader: &Kubeconfig, ask: &[&str], allow: &str) {
    let v = document(
        &live(reader, &[ask, &["-f", allow, "-o", "json"]].concat()),
        0,
    );
    assert_eq!(v["decision"]["allowed"], true, "{v}");
    assert_eq!(v["flow"]["protocol"], "TCP", "a name, as simulate's: {v}");
    let source = &v["source"];
    assert_eq!(source["complete"], true, "{source}");
    assert_eq!(source["files"], json!([allow]), "{source}");
    assert_eq!(source["missingKinds"], json!([]), "{source}");
    let cluster = &source["cluster"];
    assert_eq!(cluster["server"], cp.server(), "{cluster}");
    assert_eq!(
        cluster["context"], "default",
        "the kubeconfig's current context"
    );
    assert_eq!(cluster["overlay"], json!({"replaced": 0, "added": 1}));
    let objects = &cluster["objects"];
    assert_eq!(objects["pods"], 2, "{objects}");
    assert_eq!(objects["networkpolicies"], 1, "{objects}");
    for resource in ["namespaces", "services", "endpointslices.discovery.k8s.io"] {
        let key = resource.split('.').next().unwrap();
        assert_eq!(objects[key], count(cp, resource), "{key}: {objects}");
    }
    let not_served = cluster["notServed"].as_array().unwrap();
    for r in [
        "adminnetworkpolicies",
        "networkpolicies.crd.projectcalico.org",
    ] {
        assert!(not_served.contains(&Value::from(r)), "{r}: {cluster}");
    }
    assert!(
        objects.get("adminnetworkpolicies").is_none(),
        "a kind not served is not counted: {objects}"
    );

    let v = document(
        &live(reader, &["simulate", "--port", "443", "-o", "json"]),
        0,
    );
    assert_eq!(v["source"]["cluster"]["server"], cp.server());
    assert_eq!(v["source"]["files"], json!([]));
    assert_eq!(
        v["source"]["cluster"]["overlay"],
        json!({"replaced": 0, "added": 0})
    );
    let v = document(&live(reader, &["validate", "-o", "json"]), 0);
    assert_eq!(v["source"]["cluster"]["objects"]["pods"], 2, "{v}");
    assert_eq!(v["source"]["complete"], true, "{v}");
}

/// A `--from`/`--to` that names no pod says it was looked for in the cluster, and
/// what the namespace holds.
fn missing_pods_are_not_in_the_cluster(reader: &Kubeconfig, allow: &str) {
    for (args, said) in [
        (
            vec![
                "explain", "--from", "x/nope", "--to", "y/b", "--port", "443",
            ],
            "pod x/nope not found in the cluster: namespace x has a",
        ),
        (
            vec![
                "explain", "--from", "x/a", "--to", "y/gone", "--port", "443",
            ],
            "pod y/gone not found in the cluster: namespace y has b",
        ),
        (
            vec!["explain", "--from", "z/a", "--to", "y/b", "-f", allow],
            "pod z/a not found in the cluster (with the files overlaid): there is no namespace z",
        ),
        (
            vec![
                "explain",
                "--from",
                "x/a",
                "--to",
                "svc/y/nope",
                "--port",
                "443",
            ],
            "Service y/nope not found in the cluster",
        ),
        (
            vec!["simulate", "--from", "x/nope"],
            "pod x/nope not found in the cluster: namespace x has a",
        ),
    ] {
        let o = live(reader, &args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {out}\n{err}");
        assert!(err.contains(said), "{args:?}: {err}");
        assert!(!err.contains("manifests"), "{args:?}: {err}");
    }
}

/// `view --live`: the page is built from the cluster: its embedded data holds the
/// live pods and policy, is `simulate --live -o json`, and its explain text names the
/// live policy.
fn view_shows_the_cluster(cp: &ControlPlane, reader: &Kubeconfig) {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("live.html");
    let page_arg = page.display().to_string();
    let o = live(
        reader,
        &["view", "--live", "--port", "443", "-o", &page_arg],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("2 pods, 2 pairs on TCP/443"), "{out}");
    assert!(
        err.contains("note: live: ") && err.contains(cp.server()),
        "the page says what it read: {err}"
    );
    let data = crate::view::page_data(&std::fs::read_to_string(&page).unwrap());
    assert_eq!(data["inputs"], json!(["live cluster"]));
    let simulated = document(
        &live(reader, &["simulate", "--port", "443", "-o", "json"]),
        0,
    );
    assert_eq!(
        data["matrices"][0], simulated,
        "the page's data is simulate's"
    );
    assert_eq!(
        data["matrices"][0]["source"]["cluster"]["server"],
        cp.server()
    );
    let pods: Vec<&str> = data["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(pods, ["x/a", "y/b"]);
    assert_eq!(
        data["pods"][1]["policies"],
        json!(["NetworkPolicy y/deny-all"]),
        "the live policy selects y/b"
    );
    let results = data["matrices"][0]["results"].as_array().unwrap();
    let i = results
        .iter()
        .position(|r| r["from"] == "x/a" && r["to"] == "y/b")
        .expect("x/a -> y/b in the matrix");
    assert_eq!(results[i]["verdict"], "deny");
    let explained = data["explain"][0][i].as_str().unwrap();
    assert!(
        explained.contains("x/a -> y/b TCP/443: DENIED")
            && explained.contains("isolated for ingress by policies y/deny-all"),
        "{explained}"
    );
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
    assert!(
        out.contains(&format!(
            "read from the cluster at {} (context default)",
            cp.server()
        )),
        "the cluster is named: {out}"
    );
    json_names_the_cluster(&cp, &reader, &ask, &allow);
    missing_pods_are_not_in_the_cluster(&reader, &allow);
    view_shows_the_cluster(&cp, &reader);

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
    let v = document(&live(&blind, &[&ask[..], &["-o", "json"]].concat()), 3);
    assert!(v.get("decision").is_none(), "no answer: {v}");
    assert_eq!(v["errors"], json!([]), "{v}");
    assert_eq!(v["source"]["complete"], false, "{v}");
    let missing = &v["source"]["missingKinds"];
    assert_eq!(missing.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(missing[0]["kind"], "NetworkPolicy");
    assert_eq!(missing[0]["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(missing[0]["resource"], "networkpolicies");
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
    // The JSON answer says so without its notes: complete false, the kind missing.
    let v = document(
        &live(
            &blind,
            &[&ask[..], &["--ignore-invalid", "-o", "json"]].concat(),
        ),
        0,
    );
    assert_eq!(v["decision"]["allowed"], true, "{v}");
    assert_eq!(v["source"]["complete"], false, "{v}");
    assert_eq!(
        v["source"]["missingKinds"][0]["kind"], "NetworkPolicy",
        "{v}"
    );
    let objects = &v["source"]["cluster"]["objects"];
    assert!(objects.get("networkpolicies").is_none(), "{objects}");
    assert_eq!(objects["pods"], 2, "{objects}");
    let v = document(
        &live(
            &blind,
            &[
                "simulate",
                "--port",
                "443",
                "--ignore-invalid",
                "-o",
                "json",
            ],
        ),
        0,
    );
    assert_eq!(v["source"]["complete"], false, "{v}");
    let v = document(&live(&blind, &["validate", "-o", "json"]), 3);
    assert_eq!(v["source"]["complete"], false, "{v}");
    assert_eq!(
        v["source"]["missingKinds"][0]["resource"],
        "networkpolicies"
    );
}
