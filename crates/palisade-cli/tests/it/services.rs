//! Issue 11: `explain` and `simulate` understand Services (docs/semantics.md §10,
//! docs/output.md "explain to a Service"): a flow to a Service or its ClusterIP is
//! judged per backend, as the datapath judges it.

use std::path::PathBuf;

use serde_json::Value;

use crate::support::{palisade, repo};

const SERVICES: &str = "examples/services";

/// Runs `palisade ARGS` in the repository root: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = palisade().args(args).current_dir(repo()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json(args: &[&str]) -> Value {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// A directory of manifests of its own, removed when dropped.
struct Manifests(PathBuf);

impl Manifests {
    fn new(name: &str, yaml: &str) -> Manifests {
        let dir = std::env::temp_dir().join(format!(
            "palisade-svc-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("all.yaml"), yaml).unwrap();
        Manifests(dir)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn issue_11_explain_a_service_lists_each_backend_with_its_verdict_when_some_are_allowed() {
    let (code, text, err) = run(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "shop/web",
        "--exit-code",
    ]);
    assert_eq!(code, 5, "some backends allowed: {text}{err}");
    assert!(
        text.starts_with(
            "shop/client -> 10.96.0.20 TCP/80: PARTLY ALLOWED: allowed to 2 of 3 backends"
        ),
        "{text}"
    );
    assert!(
        text.contains("10.96.0.20 is the ClusterIP of Service shop/web port 80 \"http\" -> targetPort \"http\" (named: resolved per backend pod); 3 backend(s) from its EndpointSlices:"),
        "{text}"
    );
    // Each backend on the port its own pod names `http`, with its own verdict and rule.
    assert!(
        text.contains("shop/web-0 10.244.1.10:8080: allow: ")
            && text.contains("shop/web-1 10.244.1.11:8080: allow: ")
            && text.contains("shop/web-canary 10.244.1.12:9090: deny: ingress: denied: isolated for ingress by policies shop/web-ingress"),
        "{text}"
    );
    assert!(
        text.contains("allowed by NetworkPolicy shop/web-ingress ingress rule 0"),
        "{text}"
    );
    // The same answer through every way of naming the Service.
    for to in [
        &["--to", "10.96.0.20"][..],
        &["-n", "shop", "--to", "web"],
        &["--to", "svc/shop/web"],
        &["-n", "shop", "--to", "service/web"],
    ] {
        let mut args = vec!["explain", "-f", SERVICES, "--from", "shop/client"];
        args.extend_from_slice(to);
        let (c, t, e) = run(&args);
        assert_eq!((c, t.as_str()), (0, text.as_str()), "{to:?}: {e}");
    }
}

#[test]
fn issue_11_explain_a_service_as_json_has_the_port_mapping_and_every_backend() {
    let v = json(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "shop/web",
        "-o",
        "json",
    ]);
    let s = &v["service"];
    assert_eq!(s["name"], "shop/web");
    assert_eq!(
        s["frontend"],
        serde_json::json!({"address": "10.96.0.20", "kind": "ClusterIP"})
    );
    assert_eq!(s["port"], 80);
    assert_eq!(s["portName"], "http");
    assert_eq!(s["targetPort"], "http");
    assert_eq!(s["backendsFrom"], "EndpointSlices");
    assert_eq!(s["verdict"], "partial");
    assert_eq!(
        (s["allowedBackends"].as_u64(), s["chosenBackends"].as_u64()),
        (Some(2), Some(3))
    );
    let backends: Vec<(String, u64, String, String)> = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["port"].as_u64().unwrap(),
                b["pod"].as_str().unwrap().to_string(),
                b["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("10.244.1.10", 8080_u64, "shop/web-0", "allow"),
        ("10.244.1.11", 8080, "shop/web-1", "allow"),
        ("10.244.1.12", 9090, "shop/web-canary", "deny"),
    ]
    .map(|(a, p, n, w)| (a.to_string(), p, n.to_string(), w.to_string()));
    assert_eq!(backends, want);
    // Each backend's decision is the evaluator's for the rewritten flow.
    assert_eq!(s["backends"][2]["decision"]["allowed"], false);
    assert_eq!(s["backends"][0]["decision"]["allowed"], true);
    // One-decision readers see the worst case: a denied backend's decision.
    assert_eq!(v["decision"]["allowed"], false);
    assert_eq!(v["flow"]["dst"], serde_json::json!({"Ip": "10.96.0.20"}));
    assert_eq!(v["errors"], serde_json::json!([]));
}

#[test]
fn issue_11_a_service_without_backends_is_denied_as_the_datapath_drops_it() {
    let (code, text, _) = run(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "shop/legacy",
        "--exit-code",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.starts_with("shop/client -> 10.96.0.30 TCP/80: DENIED: the Service has no ready backend (the datapath drops it: svc-no-backend)"),
        "{text}"
    );
    assert!(
        text.contains("0 backend(s)") && text.contains("(none)"),
        "{text}"
    );
    let v = json(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "shop/legacy",
        "-o",
        "json",
    ]);
    assert_eq!(v["service"]["verdict"], "no-backend");
    assert_eq!(v["service"]["backends"], serde_json::json!([]));
    assert_eq!(v["decision"], Value::Null);
}

#[test]
fn issue_11_explain_exit_code_is_0_for_every_backend_1_for_none_5_for_some() {
    let code = |ex: &str, from: &str, to: &str, port: &str| {
        run(&[
            "explain",
            "-f",
            ex,
            "--from",
            from,
            "--to",
            to,
            "--port",
            port,
            "--exit-code",
        ])
        .0
    };
    assert_eq!(
        code(
            "examples/aws-walkthrough",
            "default/client-one",
            "svc/default/demo-app",
            "80"
        ),
        0,
        "the only backend allows client-one"
    );
    assert_eq!(
        code(
            "examples/aws-walkthrough",
            "default/client-two",
            "10.96.100.10",
            "80"
        ),
        1,
        "the only backend denies client-two"
    );
    assert_eq!(
        code(SERVICES, "shop/batch", "shop/web", "80"),
        1,
        "no backend allows batch"
    );
    assert_eq!(
        code(SERVICES, "shop/client", "shop/web", "80"),
        5,
        "two of three"
    );
    // The client among the backends is never sent to itself: web-0 reaches web-1 and
    // the canary, both deny it.
    let (c, text, _) = run(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/web-0",
        "--to",
        "shop/web",
        "--exit-code",
    ]);
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("[the client itself: the datapath never sends it to itself]"),
        "{text}"
    );
}

#[test]
fn issue_11_a_to_naming_a_missing_port_nothing_or_both_a_pod_and_a_service_is_invalid_input() {
    let (code, _, err) = run(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "shop/web",
        "--port",
        "443",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("Service shop/web has no port 443/TCP (its ports: 80/TCP \"http\")"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "shop/nothing",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("shop/nothing not found"), "{err}");
    let (code, _, err) = run(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "svc/shop/nothing",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("Service shop/nothing not found"), "{err}");

    let m = Manifests::new(
        "both",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: api, namespace: default, labels: {app: api}}\nspec: {containers: [{name: api}]}\nstatus: {podIP: 10.244.0.5}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: default}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.244.0.6}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\nspec: {selector: {app: api}, clusterIP: 10.96.0.5, ports: [{port: 80}]}\n",
    );
    let (code, _, err) = run(&[
        "explain",
        "-f",
        m.path(),
        "--from",
        "default/c",
        "--to",
        "api",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(
            "--to api names both a pod (or workload) default/api and a Service default/api"
        ) && err.contains("--to svc/default/api")
            && err.contains("--to pod/default/api"),
        "{err}"
    );
    // Either prefix answers.
    let (code, text, err) = run(&[
        "explain",
        "-f",
        m.path(),
        "--from",
        "default/c",
        "--to",
        "pod/default/api",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.starts_with("default/c -> default/api TCP/80: ALLOWED"),
        "{text}"
    );
    let (code, text, err) = run(&[
        "explain",
        "-f",
        m.path(),
        "--from",
        "default/c",
        "--to",
        "svc/api",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("10.96.0.5 is the ClusterIP of Service default/api"),
        "{text}"
    );
    // No EndpointSlice in the input: backends from the selector.
    assert!(text.contains("1 backend(s) from its selector"), "{text}");
}

#[test]
fn issue_11_an_address_that_is_no_frontend_is_judged_as_addressed() {
    // An outside address: no Service words at all.
    let (code, text, _) = run(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "192.0.2.7",
    ]);
    assert_eq!(code, 0);
    assert!(
        text.starts_with("shop/client -> 192.0.2.7 TCP/80: ALLOWED"),
        "{text}"
    );
    assert!(
        text.contains(
            "Ingress of 192.0.2.7:\n  not enforced: the destination is not a pod endpoint"
        ),
        "{text}"
    );
    assert!(!text.contains("Service"), "{text}");
    // A pod's own address: the pod's verdict (the canary denies the client on 9090).
    let (_, text, _) = run(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "10.244.1.12",
        "--port",
        "9090",
    ]);
    assert!(
        text.starts_with("shop/client -> 10.244.1.12 TCP/9090: DENIED"),
        "{text}"
    );
    assert!(!text.contains("Service"), "{text}");
    // The ClusterIP at a port no Service port declares: not translated, said so.
    let (_, text, _) = run(&[
        "explain",
        "-f",
        SERVICES,
        "--from",
        "shop/client",
        "--to",
        "10.96.0.20",
        "--port",
        "8080",
    ]);
    assert!(
        text.starts_with(
            "note: 10.96.0.20 is an address of Service shop/web (80/TCP), but not at TCP/8080"
        ),
        "{text}"
    );
    assert!(
        text.contains("Ingress of 10.96.0.20:\n  not enforced"),
        "{text}"
    );
}

#[test]
fn issue_11_seed_002_explain_names_the_service_its_backend_and_the_calico_rule() {
    let ex = "examples/calico-imds-api";
    let (code, by_ip, _) = run(&[
        "explain",
        "-f",
        ex,
        "--from",
        "default/manager",
        "--to",
        "10.96.0.1",
        "--port",
        "443",
        "--exit-code",
    ]);
    assert_eq!(code, 1, "{by_ip}");
    assert!(
        by_ip.starts_with("default/manager -> 10.96.0.1 TCP/443: DENIED\n"),
        "{by_ip}"
    );
    assert!(
        by_ip.contains("10.96.0.1 is the ClusterIP of Service default/kubernetes port 443 \"https\" -> targetPort 6443; 1 backend(s) from its EndpointSlices:"),
        "{by_ip}"
    );
    assert!(
        by_ip.contains("172.18.0.2:6443 (no pod of the input): deny: egress: denied by NetworkPolicy.projectcalico.org default/deny-k8s-api-and-imds egress rule 1 (Deny) (the rule's destination.services names Service default/kubernetes)"),
        "{by_ip}"
    );
    let (_, by_name, _) = run(&[
        "explain",
        "-f",
        ex,
        "--from",
        "default/manager",
        "--to",
        "default/kubernetes",
        "--port",
        "443",
    ]);
    assert_eq!(by_name, by_ip);
    // The endpoint address directly: the Calico rule's Service is named too.
    let (_, direct, _) = run(&[
        "explain",
        "-f",
        ex,
        "--from",
        "default/manager",
        "--to",
        "172.18.0.2",
        "--port",
        "6443",
    ]);
    assert!(
        direct.contains("Egress: the rule's destination.services names Service default/kubernetes"),
        "{direct}"
    );
    // An unselected pod reaches the API server through its Service.
    let (code, text, _) = run(&[
        "explain",
        "-f",
        ex,
        "--from",
        "default/other",
        "--to",
        "default/kubernetes",
        "--port",
        "443",
        "--exit-code",
    ]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn issue_11_a_service_without_an_address_in_the_input_is_judged_by_its_backends() {
    // Repository manifests leave the ClusterIP to the API server; the named targetPort
    // resolves against each pod's ports, and a pod without that name is no backend.
    let m = Manifests::new(
        "noaddr",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default, labels: {app: s}}\nspec: {containers: [{name: a, ports: [{name: web, containerPort: 8000}]}]}\nstatus: {podIP: 10.244.0.5}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: default, labels: {app: s}}\nspec: {containers: [{name: b, ports: [{name: web, containerPort: 8001}]}]}\nstatus: {podIP: 10.244.0.6}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: nope, namespace: default, labels: {app: s}}\nspec: {containers: [{name: nope}]}\nstatus: {podIP: 10.244.0.7}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: default}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.244.0.8}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: default}\nspec: {selector: {app: s}, ports: [{name: http, port: 80, targetPort: web}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-8000, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: s}}\n  ingress: [{ports: [{port: 8000}]}]\n",
    );
    let (code, text, err) = run(&[
        "explain",
        "-f",
        m.path(),
        "--from",
        "default/c",
        "--to",
        "s",
        "--exit-code",
    ]);
    assert_eq!(code, 5, "{text}{err}");
    assert!(
        text.starts_with(
            "default/c -> Service default/s TCP/80: PARTLY ALLOWED: allowed to 1 of 2 backends"
        ),
        "{text}"
    );
    assert!(text.contains("no address in the input"), "{text}");
    assert!(
        text.contains("default/a 10.244.0.5:8000: allow")
            && text.contains("default/b 10.244.0.6:8001: deny")
            && !text.contains("default/nope"),
        "{text}"
    );
    let v = json(&[
        "explain",
        "-f",
        m.path(),
        "--from",
        "default/c",
        "--to",
        "s",
        "-o",
        "json",
    ]);
    assert_eq!(v["service"]["frontend"], Value::Null);
    assert_eq!(
        v["flow"]["dst"],
        serde_json::json!({"Service": "default/s"})
    );
    assert_eq!(v["service"]["backendsFrom"], "selector");
}

#[test]
fn issue_11_simulate_shows_services_as_destinations_with_per_backend_summaries() {
    let (code, text, err) = run(&["simulate", "-f", SERVICES, "--port", "80"]);
    assert_eq!(code, 0, "{err}");
    let section = text
        .split_once("\nServices at TCP/80")
        .unwrap_or_else(|| panic!("no Services section: {text}"))
        .1;
    let row = |pod: &str| {
        section
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(pod))
            .unwrap_or_else(|| panic!("no row {pod}: {section}"))
            .split_whitespace()
            .skip(2)
            .collect::<Vec<_>>()
    };
    // Columns: S1 shop/legacy (no backend), S2 shop/web.
    assert!(
        section.contains("S1 Service shop/legacy (10.96.0.30:80, 0 backend(s))"),
        "{section}"
    );
    assert!(
        section.contains("S2 Service shop/web (10.96.0.20:80, 3 backend(s))"),
        "{section}"
    );
    assert_eq!(row("shop/client"), ["-", "2/3"]);
    assert_eq!(row("shop/batch"), ["-", "✗"]);

    let v = json(&["simulate", "-f", SERVICES, "--port", "80", "-o", "json"]);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["errors", "port", "protocol", "results", "services", "source"]
    );
    let cell = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from"] == "shop/client" && r["service"] == "shop/web")
        .unwrap();
    assert_eq!(cell["verdict"], "partial");
    assert_eq!(cell["frontend"], "10.96.0.20");
    assert_eq!(
        (
            cell["allowedBackends"].as_u64(),
            cell["chosenBackends"].as_u64()
        ),
        (Some(2), Some(3))
    );
    assert_eq!(cell["backends"][2]["port"], 9090);
    assert_eq!(cell["backends"][2]["verdict"], "deny");
    // The pod matrix is unchanged by the section: client -> canary at 80 is denied.
    let r = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from"] == "shop/client" && r["to"] == "shop/web-canary")
        .unwrap();
    assert_eq!(r["verdict"], "deny");

    // An input without Services: neither the section nor the key.
    let (_, text, _) = run(&["simulate", "-f", "examples/deny-metadata", "--port", "80"]);
    assert!(!text.contains("Services at"), "{text}");
    let v = json(&[
        "simulate",
        "-f",
        "examples/deny-metadata",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert!(v.get("services").is_none());
}
