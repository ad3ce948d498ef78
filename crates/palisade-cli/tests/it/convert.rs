//! `palisade convert` (issue 11): YAML on stdout, a note per refused object on stderr,
//! exit 0 / 5 / 3; and what it writes means the same to `simulate` as what it read.

use std::path::PathBuf;

use crate::support::{palisade, repo};

/// A fresh directory for this test.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("palisade-convert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `palisade ARGS` from the repository root: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = palisade().current_dir(repo()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `simulate` of `paths` on one port: the matrix.
fn matrix(paths: &[&str], port: &str, protocol: &str) -> String {
    let mut args = vec!["simulate"];
    for p in paths {
        args.extend(["-f", p]);
    }
    args.extend(["--port", port, "--protocol", protocol]);
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

#[test]
fn convert_the_walkthrough_to_calico_and_back_keeps_simulates_matrix() {
    let d = dir("walkthrough");
    let (code, yaml, err) = run(&[
        "convert",
        "--to",
        "calico",
        "-f",
        "examples/aws-walkthrough",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        yaml.matches("apiVersion: projectcalico.org/v3").count(),
        5,
        "{yaml}"
    );
    assert_eq!(yaml.matches("\n---\n").count(), 4, "{yaml}");
    assert!(yaml.contains("order: 1000\n"), "{yaml}");
    assert!(err.contains("converted 5 of 5 object(s)"), "{err}");
    let calico = d.join("calico.yaml");
    std::fs::write(&calico, &yaml).unwrap();
    let cluster = repo().join("examples/aws-walkthrough/00-cluster.yaml");
    let (cluster, calico) = (cluster.to_str().unwrap(), calico.to_str().unwrap());
    for (port, proto) in [("80", "TCP"), ("53", "UDP"), ("8080", "TCP")] {
        assert_eq!(
            matrix(&["examples/aws-walkthrough"], port, proto),
            matrix(&[cluster, calico], port, proto),
            "{port}/{proto}"
        );
    }
    // Back to NetworkPolicies: every Calico policy it wrote converts, meaning the same.
    let (code, back, err) = run(&["convert", "--to", "networkpolicy", "-f", calico]);
    assert_eq!(code, 0, "{err}");
    let nps = d.join("nps.yaml");
    std::fs::write(&nps, &back).unwrap();
    assert_eq!(
        matrix(&["examples/aws-walkthrough"], "80", "TCP"),
        matrix(&[cluster, nps.to_str().unwrap()], "80", "TCP")
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn convert_refuses_the_seed_002_policy_naming_object_file_and_field_and_exits_5() {
    let (code, out, err) = run(&[
        "convert",
        "--to",
        "networkpolicy",
        "-f",
        "examples/calico-imds-api",
    ]);
    assert_eq!(code, 5, "{err}");
    assert_eq!(out, "");
    assert!(
        err.contains("refused: NetworkPolicy.projectcalico.org default/deny-k8s-api-and-imds (examples/calico-imds-api/01-deny-k8s-api-and-imds.yaml): spec.egress[0].action: Deny"),
        "{err}"
    );
    // JSON: the same refusal as data.
    let (code, out, _) = run(&[
        "convert",
        "--to",
        "networkpolicy",
        "-f",
        "examples/calico-imds-api",
        "-o",
        "json",
    ]);
    assert_eq!(code, 5);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["converted"], serde_json::json!([]));
    assert_eq!(v["refused"][0]["field"], "spec.egress[0].action");
    assert_eq!(
        v["refused"][0]["file"],
        "examples/calico-imds-api/01-deny-k8s-api-and-imds.yaml"
    );
    // A ClusterNetworkPolicy is refused too; with nothing of the source kinds, exit 3.
    let (code, _, err) = run(&["convert", "--to", "calico", "-f", "examples/deny-metadata"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("refused: ClusterNetworkPolicy deny-metadata"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "convert",
        "--to",
        "clusternetworkpolicy",
        "-f",
        "examples/aws-walkthrough",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("nothing to convert"), "{err}");
}

#[test]
fn convert_writes_the_objects_that_load_and_exits_3_for_those_that_do_not() {
    let d = dir("invalid");
    let f = d.join("p.yaml");
    std::fs::write(
        &f,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: good, namespace: a}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: a}\nspec: {podSelecter: {}}\n",
    )
    .unwrap();
    let (code, out, err) = run(&["convert", "--to", "calico", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(out.contains("name: good"), "{out}");
    assert!(!out.contains("name: bad"), "{out}");
    assert!(err.contains("podSelecter"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
