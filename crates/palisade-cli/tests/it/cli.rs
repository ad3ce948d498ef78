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
    assert_eq!(keys, ["port", "protocol", "results"]);
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
    assert_eq!(out.status.code(), Some(1));
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
