//! Issue 12, kubectl habits: `-o`, `-n`, `-l`, bare names, `explain --exit-code`.

use crate::support::{palisade, repo};

fn run(args: &[&str]) -> (i32, String) {
    let out = palisade().args(args).current_dir(repo()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

const AWS: &str = "examples/aws-walkthrough";

#[test]
fn issue_12_explain_exit_code_says_allowed_denied_invalid_and_could_not_run_apart() {
    let ex = |from: &str, extra: &[&str]| {
        let mut a = vec!["explain", "-f", AWS, "-n", "default", "--from", from];
        // `pod/`: the walkthrough's Service default/demo-app has the pod's name (issue 11).
        a.extend_from_slice(&["--to", "pod/demo-app", "--exit-code"]);
        a.extend_from_slice(extra);
        run(&a).0
    };
    assert_eq!(ex("client-one", &[]), 0, "allowed");
    assert_eq!(ex("client-two", &[]), 1, "denied");
    assert_eq!(
        ex("nobody", &[]),
        3,
        "a name that is no pod is invalid input"
    );
    assert_eq!(ex("client-one", &["--port", "x"]), 2, "usage");
    let (code, _) = run(&[
        "explain",
        "-f",
        "no/such/file",
        "--from",
        "a/b",
        "--to",
        "c/d",
        "--exit-code",
    ]);
    assert_eq!(code, 4, "could not run");
    let (code, _) = run(&[
        "explain",
        "-f",
        AWS,
        "--from",
        "default/client-two",
        "--to",
        "pod/default/demo-app",
    ]);
    assert_eq!(code, 0, "without --exit-code a denial is still an answer");
}

#[test]
fn issue_12_namespace_and_label_filters_narrow_the_matrix_to_matching_pods() {
    let (code, out) = run(&[
        "simulate",
        "-f",
        AWS,
        "-n",
        "default",
        "-l",
        "app!=demo-app",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut pods: Vec<String> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| [r["from"].as_str().unwrap().to_string()])
        .collect();
    pods.sort();
    pods.dedup();
    assert_eq!(pods, ["default/client-one", "default/client-two"]);
}

#[test]
fn issue_12_yaml_output_is_the_json_document() {
    let (_, json) = run(&["simulate", "-f", AWS, "-o", "json"]);
    let (code, yaml) = run(&["simulate", "-f", AWS, "-o", "yaml"]);
    assert_eq!(code, 0);
    let from_json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let from_yaml: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(from_json, from_yaml);
    let (code, v) = run(&["validate", "-f", AWS, "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["loaded"]["pods"], 5);
}

#[test]
fn issue_12_wide_adds_each_pairs_reason_to_the_table() {
    let (code, out) = run(&["simulate", "-f", AWS, "-o", "wide"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("TCP/80"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("default/client-two -> default/demo-app: deny: ")),
        "{out}"
    );
}
