//! Offline commands: simulate, explain, validate on the bundled examples.

use crate::support::{palisade, repo, run, verdict};

#[test]
fn simulate_json_has_exactly_the_documented_shape() {
    let out = run(palisade()
        .args([
            "simulate",
            "--port",
            "80",
            "--protocol",
            "TCP",
            "--output",
            "json",
            "-f",
        ])
        .arg(repo().join("examples/aws-walkthrough")));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    // `services`: the walkthrough has Services (demo-app, kube-dns); issue 11.
    // `source`: where the answer came from (issue 12; the files, no cluster).
    assert_eq!(
        keys,
        ["errors", "port", "protocol", "results", "services", "source"]
    );
    assert_eq!(v["errors"], serde_json::json!([]), "a complete answer");
    let dir = repo().join("examples/aws-walkthrough");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        v["source"],
        serde_json::json!({"complete": true, "files": files, "cluster": null, "missingKinds": []})
    );
    assert_eq!(v["port"], 80);
    assert_eq!(v["protocol"], "TCP");
    let r = &v["results"][0];
    let mut rk: Vec<&String> = r.as_object().unwrap().keys().collect();
    rk.sort();
    assert_eq!(rk, ["from", "reason", "to", "verdict"]);
    // The whole walkthrough applied: client-one may reach demo-app, client-two may not.
    assert_eq!(
        verdict(&v, "default/client-one", "default/demo-app"),
        "allow"
    );
    assert_eq!(
        verdict(&v, "default/client-two", "default/demo-app"),
        "deny"
    );
    assert_eq!(
        verdict(&v, "another-ns/another-client", "default/demo-app"),
        "allow"
    );
    assert_eq!(
        verdict(&v, "default/client-one", "default/client-two"),
        "deny"
    );
}

#[test]
fn explain_names_the_admin_policy_that_denies_the_metadata_address() {
    let ex = repo().join("examples/deny-metadata");
    let cluster: serde_json::Value = {
        let out = run(palisade()
            .args(["simulate", "--output", "json", "-f"])
            .arg(&ex));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let from = cluster["results"][0]["from"].as_str().unwrap().to_string();
    let out = run(palisade()
        .args([
            "explain",
            "--from",
            &from,
            "--to",
            "169.254.169.254",
            "--port",
            "80",
            "-f",
        ])
        .arg(&ex));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("DENIED"), "{text}");
    assert!(text.contains("Admin"), "{text}");
}

#[test]
fn validate_reports_file_object_and_field_and_exits_nonzero() {
    let dir = std::env::temp_dir().join(format!("palisade-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: default}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 8080\n      endPort: 80\n",
    )
    .unwrap();
    let out = palisade()
        .args(["validate", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(3), "invalid input");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("NetworkPolicy default/web"), "{text}");
    assert!(text.contains("spec.ingress[0].ports[0].endPort"), "{text}");
}

#[test]
fn every_bundled_example_validates_cleanly() {
    let mut n = 0;
    for dir in std::fs::read_dir(repo().join("examples")).unwrap() {
        let dir = dir.unwrap().path();
        if dir.is_dir() {
            let out = run(palisade().args(["validate", "--strict", "-f"]).arg(&dir));
            assert!(
                String::from_utf8(out.stdout)
                    .unwrap()
                    .contains("0 error(s), 0 warning(s)"),
                "{}",
                dir.display()
            );
            n += 1;
        }
    }
    assert!(n >= 4, "expected the bundled examples, found {n}");
}

// Issue 8: strict input and honest answers.

/// A fresh directory for one test, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let d = std::env::temp_dir().join(format!("palisade-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let f = self.0.join(name);
        std::fs::write(&f, text).unwrap();
        f
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pod, and a Calico policy that denies it the metadata address: Palisade does not
/// enforce Calico policies, so an answer without it would be a wrong "allowed".
/// A kind Palisade refuses (Calico's audit-only staged policy; Calico's enforced kinds
/// are supported since issue 11).
const WITH_UNENFORCED: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: default, labels: {app: web}}\nstatus: {podIP: 10.0.0.5}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: default}\nstatus: {podIP: 10.0.0.6}\n---\napiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata: {name: deny-metadata}\nspec:\n  egress: [{action: Deny, destination: {nets: [169.254.169.254/32]}}]\n";

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn issue_8_validate_rejects_a_typo_with_its_line_and_the_field_meant() {
    let dir = TempDir::new("typo");
    let f = dir.file(
        "t.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: default}\nspec:\n  podSelecter: {matchLabels: {app: web}}\n  ingress:\n  - form: [{podSelector: {}}]\n",
    );
    let out = palisade()
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = text(&out.stdout);
    let name = f.display();
    assert!(
        stdout.contains(&format!("{name}:5:3: NetworkPolicy default/web: spec.podSelecter: unknown field; did you mean podSelector?")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{name}:7:5: NetworkPolicy default/web: spec.ingress[0].form: unknown field; did you mean from?")),
        "{stdout}"
    );
}

#[test]
fn issue_8_explain_gives_no_answer_while_an_unenforced_policy_is_left_out() {
    let dir = TempDir::new("explain-partial");
    let f = dir.file("t.yaml", WITH_UNENFORCED);
    let args = [
        "explain",
        "--from",
        "default/app",
        "--to",
        "169.254.169.254",
        "--port",
        "80",
        "-f",
    ];
    let out = palisade().args(args).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "no answer from a partial model");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("GlobalNetworkPolicy deny-metadata"),
        "{stderr}"
    );
    assert!(stderr.contains("--ignore-invalid"), "{stderr}");

    let out = run(palisade().args(args).arg(&f).arg("--ignore-invalid"));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().next(),
        Some("note: this answer excludes 1 invalid object(s): StagedGlobalNetworkPolicy deny-metadata"),
        "{stdout}"
    );

    let out = palisade()
        .args(args)
        .arg(&f)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["errors"][0]["object"],
        "StagedGlobalNetworkPolicy deny-metadata"
    );
    assert_eq!(v["errors"][0]["line"], 12, "the line of `kind`");
    assert!(v.get("decision").is_none(), "{v}");
}

#[test]
fn issue_8_simulate_json_carries_the_errors_and_answers_only_when_asked() {
    let dir = TempDir::new("simulate-partial");
    let f = dir.file("t.yaml", WITH_UNENFORCED);
    let out = palisade()
        .args(["simulate", "--output", "json", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["errors"][0]["field"], "kind");
    assert!(v.get("results").is_none(), "{v}");

    let out = run(palisade()
        .args(["simulate", "--output", "json", "--ignore-invalid", "-f"])
        .arg(&f));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(verdict(&v, "default/app", "default/db"), "allow");
    assert!(text(&out.stderr).contains("note: this answer excludes"));
    assert_eq!(
        v["source"]["complete"], false,
        "an answer that leaves an object out is not complete: {v}"
    );

    let out = run(palisade()
        .args(["simulate", "--ignore-invalid", "-f"])
        .arg(&f));
    assert!(text(&out.stdout).starts_with("note: this answer excludes 1 invalid object(s)"));
}

#[test]
fn issue_8_yaml_1_2_names_work_end_to_end() {
    let dir = TempDir::new("yaml12");
    let f = dir.file(
        "t.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: no, namespace: y, labels: {light: on}}\nstatus: {podIP: 10.0.0.5}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: off, namespace: n}\nstatus: {podIP: 10.0.0.6}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: y}\nspec: {podSelector: {matchLabels: {light: on}}}\n",
    );
    let out = run(palisade()
        .args(["simulate", "--output", "json", "-f"])
        .arg(&f));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        verdict(&v, "n/off", "y/no"),
        "deny",
        "the policy isolates y/no"
    );
    assert_eq!(verdict(&v, "y/no", "n/off"), "allow");
}

#[test]
fn issue_8_empty_input_and_an_empty_directory_are_invalid_input() {
    let dir = TempDir::new("empty");
    let empty = dir.file("empty.yaml", "# nothing yet\n");
    let sub = dir.0.join("none");
    std::fs::create_dir_all(&sub).unwrap();
    for (what, path) in [("empty file", &empty), ("empty directory", &sub)] {
        for cmd in [
            vec!["validate"],
            vec!["simulate"],
            vec!["explain", "--from", "default/a", "--to", "10.0.0.1"],
        ] {
            let out = palisade().args(&cmd).arg("-f").arg(path).output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(3),
                "{what} {cmd:?}: {}",
                text(&out.stderr)
            );
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("no Kubernetes objects")
                    || stderr.contains("holds no manifest files"),
                "{what} {cmd:?}: {stderr}"
            );
        }
    }
}

#[test]
fn issue_8_every_command_lists_the_exit_codes_in_its_help() {
    for cmd in [
        vec!["--help"],
        vec!["simulate", "--help"],
        vec!["explain", "--help"],
        vec!["validate", "--help"],
        vec!["lab", "up", "--help"],
        vec!["endpoint", "diff", "--help"],
    ] {
        let out = run(palisade().args(&cmd));
        let help = text(&out.stdout);
        for line in [
            "0  success",
            "1  failure",
            "2  usage error",
            "3  invalid input",
        ] {
            assert!(help.contains(line), "{cmd:?} lacks {line:?}:\n{help}");
        }
    }
}

#[test]
fn issue_8_lint_warnings_in_validate_name_their_file() {
    let dir = TempDir::new("lint");
    let f = dir.file(
        "p.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: default}\nspec: {podSelector: {matchLabels: {app: nothing}}}\n",
    );
    let out = run(palisade().args(["validate", "-f"]).arg(&f));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "warning: {}: NetworkPolicy default/web: spec.podSelector: selects no pod",
            f.display()
        )),
        "{stdout}"
    );
}

/// Issue 11 (seeds/002): the Calico policy exactly as the article prints it, through
/// `explain`, with the `kubernetes` Service and its EndpointSlice in the cluster.
#[test]
fn issue_11_explain_applies_the_seed_002_calico_policy_as_printed() {
    let ex = repo().join("examples/calico-imds-api");
    for (to, port, word, rule) in [
        ("169.254.169.254", "80", "DENIED", "egress rule 0 (Deny)"),
        ("10.96.0.1", "443", "DENIED", "egress rule 1 (Deny)"),
        ("172.18.0.2", "6443", "DENIED", "egress rule 1 (Deny)"),
        ("192.0.2.10", "443", "ALLOWED", "egress rule 2 (Allow)"),
    ] {
        let out = run(palisade()
            .args([
                "explain",
                "--from",
                "default/manager",
                "--to",
                to,
                "--port",
                port,
                "-f",
            ])
            .arg(&ex));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(word), "{to}: {text}");
        assert!(
            text.contains("NetworkPolicy.projectcalico.org default/deny-k8s-api-and-imds")
                && text.contains(rule),
            "{to}: {text}"
        );
    }
    // An unselected pod reaches the API server.
    let out = run(palisade()
        .args([
            "explain",
            "--from",
            "default/other",
            "--to",
            "10.96.0.1",
            "--port",
            "443",
            "-f",
        ])
        .arg(&ex));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ALLOWED"), "{text}");
}

/// Issue 12's near miss: a denied side names the rule that came closest and the one
/// condition it lacks, in the text and in the JSON.
#[test]
fn issue_12_explain_names_the_closest_rule_and_what_it_lacks() {
    let ex = repo().join("examples/aws-walkthrough");
    let args = [
        "explain",
        "--from",
        "default/client-two",
        "--to",
        "pod/default/demo-app",
        "--port",
        "80",
        "-f",
    ];
    let out = run(palisade().args(args).arg(&ex));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            "closest: NetworkPolicy default/demo-app-allow-another-ns ingress rule 0: would allow if \
             namespace default had label kubernetes.io/metadata.name=another-ns \
             (it has kubernetes.io/metadata.name=default)"
        ),
        "{text}"
    );
    let out = run(palisade().args(args).arg(&ex).args(["-o", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nm = &v["decision"]["ingress"]["near_miss"];
    assert_eq!(
        nm["closest"]["policy"], "default/demo-app-allow-another-ns",
        "{nm}"
    );
    let failure = &nm["closest"]["peers"][0]["failure"];
    assert_eq!(failure["kind"], "namespace_label", "{nm}");
    assert_eq!(failure["key"], "kubernetes.io/metadata.name", "{nm}");
    assert_eq!(failure["actual"], "default", "{nm}");
    // Every rule of the isolating policies is listed, not only the closest.
    assert!(nm["rules"].as_array().is_some_and(|r| r.len() >= 2), "{nm}");
    // The allowed egress side carries none.
    assert!(v["decision"]["egress"].get("near_miss").is_none(), "{v}");
}

/// Issue 12: explain's JSON names its protocol (`TCP`, `ICMP`, `protocol 47`) as
/// `simulate`'s does, and says where the answer came from.
#[test]
fn issue_12_explain_json_names_the_protocol_and_its_source() {
    let ex = repo().join("examples/deny-metadata");
    for (protocol, name) in [
        ("TCP", "TCP"),
        ("udp", "UDP"),
        ("ICMP", "ICMP"),
        ("47", "protocol 47"),
    ] {
        let out = run(palisade()
            .args([
                "explain",
                "--from",
                "shop/web",
                "--to",
                "169.254.169.254",
                "--port",
                "80",
                "--protocol",
                protocol,
                "-o",
                "json",
                "-f",
            ])
            .arg(&ex));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["flow"]["protocol"], name, "{v}");
        assert_eq!(v["flow"]["src"], serde_json::json!({"Pod": "shop/web"}));
        assert_eq!(v["source"]["complete"], true, "{v}");
        assert!(v["source"]["cluster"].is_null(), "{v}");
        assert_eq!(
            v["source"]["files"].as_array().map(Vec::len),
            Some(2),
            "{v}"
        );
        assert_protocols_named(&v);
    }
    // A Calico policy's decision, and one to a Service (per backend), hold no protocol
    // number either.
    for (dir, from, to, port) in [
        (
            "examples/calico-imds-api",
            "default/manager",
            "10.96.0.1",
            "443",
        ),
        (
            "examples/aws-walkthrough",
            "default/client-one",
            "svc/default/demo-app",
            "80",
        ),
    ] {
        let out = run(palisade()
            .args([
                "explain", "--from", from, "--to", to, "--port", port, "-o", "json", "-f",
            ])
            .arg(repo().join(dir)));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["flow"]["protocol"], "TCP", "{dir}: {v}");
        assert_eq!(v["source"]["complete"], true, "{dir}: {v}");
        assert_protocols_named(&v);
    }
}

/// Every `protocol` key anywhere in `v` holds a name, never a number.
fn assert_protocols_named(v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "protocol" {
                    assert!(x.is_string(), "protocol {x} in {v}");
                }
                assert_protocols_named(x);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(assert_protocols_named),
        _ => {}
    }
}

/// Issue 12: a `--from`/`--to` pod that is not in the files names where it was looked
/// for and what its namespace holds.
#[test]
fn issue_12_a_missing_pod_names_the_manifests_and_its_namespace() {
    let ex = repo().join("examples/aws-walkthrough");
    for (from, why) in [
        ("default/nope", "pod default/nope not found in the manifests: namespace default has client-one, client-two, demo-app"),
        ("elsewhere/x", "pod elsewhere/x not found in the manifests: there is no namespace elsewhere"),
    ] {
        let out = palisade()
            .args(["explain", "--from", from, "--to", "10.0.0.1", "--port", "80", "-f"])
            .arg(&ex)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        let err = text(&out.stderr);
        assert!(err.contains(why), "{err}");
        let out = palisade()
            .args(["simulate", "--from", from, "-f"])
            .arg(&ex)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        let err = text(&out.stderr);
        assert!(err.contains(why), "{err}");
    }
}
