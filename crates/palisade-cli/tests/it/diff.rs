//! Issue 12, "what does this change break?": `palisade diff` (verdict changes between a
//! current and a proposed state, exit codes that gate a pull request) and
//! `palisade completion`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{palisade, repo};

const AWS: &str = "examples/aws-walkthrough";

/// Runs `palisade args` from the repository root: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = palisade().args(args).current_dir(repo()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A directory with one proposed file `name` holding `text`.
fn proposed(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A copy of `example` with `extra` files added (replacing same-named ones): the
/// proposed state written out whole, for `simulate` to be the oracle.
fn whole(example: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(repo().join(example)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// (from, to, verdict) of every pair `simulate` gives on one port.
fn simulated(dir: &Path, protocol: &str, port: u16) -> BTreeSet<(String, String, String)> {
    let p = port.to_string();
    let (code, out, err) = run(&[
        "simulate",
        "-f",
        dir.to_str().unwrap(),
        "--port",
        &p,
        "--protocol",
        protocol,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    json(&out)["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("from"), s("to"), s("verdict"))
        })
        .collect()
}

/// The pairs whose verdict differs between `simulate` of two directories on one port,
/// as (from, to, "denied" | "allowed").
fn oracle(
    cur: &Path,
    prop: &Path,
    protocol: &str,
    port: u16,
) -> BTreeSet<(String, String, String)> {
    let before = simulated(cur, protocol, port);
    let after = simulated(prop, protocol, port);
    before
        .iter()
        .filter_map(|(f, t, v)| {
            let now = after.iter().find(|(f2, t2, _)| f2 == f && t2 == t)?;
            (now.2 != *v).then(|| {
                let change = if now.2 == "deny" { "denied" } else { "allowed" };
                (f.clone(), t.clone(), change.to_string())
            })
        })
        .collect()
}

/// The changes of a diff document on one port, as the oracle gives them.
fn changes_on(doc: &Value, protocol: &str, port: u16) -> BTreeSet<(String, String, String)> {
    doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["protocol"] == protocol && c["port"] == port)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("from"), s("to"), s("change"))
        })
        .collect()
}

const DENY_DNS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-dns, namespace: kube-system}
spec:
  podSelector: {matchLabels: {k8s-app: kube-dns}}
  policyTypes: [Ingress]
";

#[test]
fn issue_12_diff_a_tightening_change_exits_1_and_names_each_denied_flow_with_both_rules() {
    let (_d, file) = proposed("isolate-dns.yaml", DENY_DNS);
    let f = file.to_str().unwrap();
    let (code, out, err) = run(&["diff", "-f", AWS, "-f", f, "-o", "json"]);
    assert_eq!(
        code, 1,
        "a denied flow that is allowed today exits 1: {err}\n{out}"
    );
    let doc = json(&out);
    assert_eq!(doc["errors"], serde_json::json!([]));
    assert_eq!(
        doc["objects"]["added"],
        serde_json::json!(["NetworkPolicy kube-system/isolate-dns"])
    );
    // The same answer as two simulations, on every port coredns declares and the
    // policies name (80/TCP).
    let prop = whole(AWS, &[("isolate-dns.yaml", DENY_DNS)]);
    let cur = repo().join(AWS);
    let mut total = 0;
    for (protocol, port) in [("UDP", 53), ("TCP", 53), ("TCP", 9153), ("TCP", 80)] {
        let want: BTreeSet<_> = oracle(&cur, prop.path(), protocol, port)
            .into_iter()
            .filter(|(_, to, _)| to == "kube-system/coredns")
            .collect();
        let got: BTreeSet<_> = changes_on(&doc, protocol, port)
            .into_iter()
            .filter(|(_, to, _)| to == "kube-system/coredns")
            .collect();
        assert!(
            !want.is_empty(),
            "{protocol}/{port}: the oracle sees changes"
        );
        assert_eq!(got, want, "{protocol}/{port}");
        total += got.len();
    }
    assert_eq!(
        doc["summary"]["denied"], total,
        "only coredns's ingress changed"
    );
    assert_eq!(doc["summary"]["allowed"], 0);
    // Each side names its rule: the proposed one is the new policy isolating coredns.
    for c in doc["changes"].as_array().unwrap() {
        assert_eq!(c["current"]["verdict"], "allow", "{c}");
        assert_eq!(c["proposed"]["verdict"], "deny", "{c}");
        let reason = c["proposed"]["reason"].as_str().unwrap();
        assert!(reason.contains("kube-system/isolate-dns"), "{c}");
    }
    // The table: a namespace header, the row and both sides' reasons.
    let (code, table, _) = run(&["diff", "-f", AWS, "-f", f]);
    assert_eq!(code, 1);
    assert!(table.starts_with(&format!("{total} flow(s) change: {total} allowed today would be denied, 0 denied today would be allowed")), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            l.trim() == "default/client-two -> kube-system/coredns  UDP/53  allow -> DENY"
        })
        .unwrap_or_else(|| panic!("no row for client-two to coredns on UDP/53:\n{table}"));
    assert!(lines[..at].contains(&"namespace kube-system"), "{table}");
    assert!(lines[at + 1].trim().starts_with("current: "), "{table}");
    assert!(
        lines[at + 2].contains("proposed: ingress: ") && lines[at + 2].contains("isolate-dns"),
        "{table}"
    );
}

#[test]
fn issue_12_diff_a_loosening_change_exits_5_and_shows_the_new_allow() {
    let allow = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: demo-app-allow-client-two, namespace: default}
spec:
  podSelector: {matchLabels: {app: demo-app}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client-two}}}]
    ports: [{port: 80, protocol: TCP}]
";
    let (_d, file) = proposed("allow.yaml", allow);
    let (code, out, err) = run(&[
        "diff",
        "-f",
        AWS,
        "-f",
        file.to_str().unwrap(),
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(code, 5, "only more allowed exits 5: {err}\n{out}");
    let doc = json(&out);
    let prop = whole(AWS, &[("allow.yaml", allow)]);
    let want = oracle(&repo().join(AWS), prop.path(), "TCP", 80);
    assert_eq!(
        want,
        BTreeSet::from([(
            "default/client-two".to_string(),
            "default/demo-app".to_string(),
            "allowed".to_string()
        )])
    );
    assert_eq!(changes_on(&doc, "TCP", 80), want);
    let c = &doc["changes"][0];
    assert_eq!(c["current"]["verdict"], "deny");
    assert!(
        c["current"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("ingress: "),
        "{c}"
    );
    assert!(
        c["proposed"]["reason"]
            .as_str()
            .unwrap()
            .contains("default/demo-app-allow-client-two"),
        "{c}"
    );
    assert_eq!(
        doc["summary"]["flows"], 20,
        "5 pods, 20 ordered pairs, one port"
    );
}

#[test]
fn issue_12_diff_reapplying_an_unchanged_file_changes_nothing_and_exits_0() {
    let f = format!("{AWS}/05-allow-egress-to-demo-app.yaml");
    let (code, out, err) = run(&["diff", "-f", AWS, "-f", &f]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.starts_with("no flow changes its verdict\n"), "{out}");
    assert!(
        out.contains("replaced: NetworkPolicy default/client-one-allow-egress-demo-app"),
        "{out}"
    );
    assert!(
        !err.contains("duplicate object"),
        "overlaying is not a duplicate: {err}"
    );
    // The same through --current/--proposed, as JSON.
    let (code, out, _) = run(&["diff", "--current", AWS, "--proposed", &f, "-o", "json"]);
    assert_eq!(code, 0);
    let doc = json(&out);
    assert_eq!(doc["changes"], serde_json::json!([]));
    assert!(
        doc["summary"]["flows"].as_u64().unwrap() > 20,
        "every declared and named port: {doc}"
    );
}

#[test]
fn issue_12_diff_a_replaced_policy_denies_its_old_port_and_allows_its_new_one() {
    // demo-app-allow-another-ns moves from port 80 to 8080.
    let moved = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: demo-app-allow-another-ns, namespace: default}
spec:
  podSelector: {matchLabels: {app: demo-app}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: another-ns}}}]
    ports: [{port: 8080, protocol: TCP}]
";
    let (_d, file) = proposed("03-allow-ingress-from-another-ns.yaml", moved);
    let (code, out, err) = run(&[
        "diff",
        "-f",
        AWS,
        "-f",
        file.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(code, 1, "{err}\n{out}");
    let doc = json(&out);
    assert_eq!(
        doc["objects"]["replaced"],
        serde_json::json!(["NetworkPolicy default/demo-app-allow-another-ns"])
    );
    assert_eq!(doc["objects"]["added"], serde_json::json!([]));
    let prop = whole(AWS, &[("03-allow-ingress-from-another-ns.yaml", moved)]);
    let cur = repo().join(AWS);
    for port in [80, 8080] {
        let want: BTreeSet<_> = oracle(&cur, prop.path(), "TCP", port)
            .into_iter()
            .filter(|(_, to, _)| to == "default/demo-app")
            .collect();
        let got: BTreeSet<_> = changes_on(&doc, "TCP", port)
            .into_iter()
            .filter(|(_, to, _)| to == "default/demo-app")
            .collect();
        assert_eq!(got, want, "TCP/{port}");
        let expected = if port == 80 { "denied" } else { "allowed" };
        assert_eq!(
            want,
            BTreeSet::from([(
                "another-ns/another-client".into(),
                "default/demo-app".into(),
                expected.into()
            )]),
            "TCP/{port}"
        );
    }
}

#[test]
fn issue_12_diff_groups_replicas_into_one_row_per_workload_pair() {
    // web loses its access to db: every web pod to every db pod, on db's port.
    let no_web = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: []
";
    let (_d, file) = proposed("db.yaml", no_web);
    let (code, out, err) = run(&[
        "diff",
        "-f",
        "examples/workloads/app.yaml",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}\n{out}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .starts_with("note: 5 pod(s) without status.podIP"),
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" -> ") && !l.contains(':'))
        .collect();
    assert_eq!(
        row,
        ["  shop/web (Deployment x3) -> shop/db (StatefulSet x2)  TCP/5432  allow -> DENY  (6 pod pairs)"],
        "{out}"
    );
    // JSON keeps one change per pod pair, each naming its workloads.
    let (_, out, _) = run(&[
        "diff",
        "-f",
        "examples/workloads/app.yaml",
        "-f",
        file.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let doc = json(&out);
    let changes = doc["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 6, "{doc}");
    for c in changes {
        assert_eq!(c["fromWorkload"], "shop/web");
        assert_eq!(c["toWorkload"], "shop/db");
    }
    // Deleting the policy instead lets db's replicas reach each other: only allows more.
    let (code, out, err) = run(&[
        "diff",
        "--current",
        "examples/workloads/app.yaml",
        "--delete",
        "networkpolicy/shop/db-from-web",
    ]);
    assert_eq!(code, 5, "{err}\n{out}");
    assert!(
        out.contains("deleted: NetworkPolicy shop/db-from-web"),
        "{out}"
    );
    assert!(
        out.contains("shop/db (StatefulSet x2) -> shop/db (StatefulSet x2)  TCP/5432  deny -> allow  (2 pod pairs)"),
        "{out}"
    );
}

#[test]
fn issue_12_diff_an_invalid_proposed_file_exits_3_naming_file_and_field() {
    let bad = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: default}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 80, protocl: TCP}]
";
    let (_d, file) = proposed("broken.yaml", bad);
    let f = file.to_str().unwrap();
    let (code, out, err) = run(&["diff", "-f", AWS, "-f", f]);
    assert_eq!(code, 3, "{err}\n{out}");
    assert!(out.is_empty(), "no answer: {out}");
    let line = err
        .lines()
        .find(|l| l.contains("broken.yaml"))
        .unwrap_or_else(|| panic!("the file is named: {err}"));
    assert!(
        line.contains("NetworkPolicy default/broken") && line.contains("protocl"),
        "{line}"
    );
    let (code, out, _) = run(&["diff", "-f", AWS, "-f", f, "-o", "json"]);
    assert_eq!(code, 3);
    let doc = json(&out);
    let e = &doc["errors"][0];
    assert!(
        e["file"].as_str().unwrap().ends_with("broken.yaml"),
        "{doc}"
    );
    assert_eq!(e["object"], "NetworkPolicy default/broken");
    assert!(e["field"].as_str().unwrap().contains("protocl"), "{doc}");
    // A --delete that names nothing is invalid input too, and names the flag.
    let (code, _, err) = run(&[
        "diff",
        "--current",
        AWS,
        "--delete",
        "NetworkPolicy/default/nope",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("--delete NetworkPolicy/default/nope: names no object"),
        "{err}"
    );
    // One side alone is a usage error.
    let (code, _, err) = run(&["diff", "-f", AWS]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn issue_12_completion_scripts_name_the_subcommands_and_bash_completes_a_partial_word() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(&["completion", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for sub in ["simulate", "explain", "diff", "completion"] {
            assert!(out.contains(sub), "{shell} script names {sub}");
        }
    }
    let (_, script, _) = run(&["completion", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisade.bash");
    std::fs::write(&path, script).unwrap();
    // bash's own completion machinery: the words typed so far, the word being completed.
    let complete = |words: &str, cword: usize| {
        let out = std::process::Command::new("bash")
            .arg("--norc")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _palisade palisade \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let subs = complete("palisade di", 1);
    assert_eq!(subs.lines().collect::<Vec<_>>(), ["diff"], "{subs}");
    let flags = complete("palisade diff --sn", 2);
    assert_eq!(flags.lines().collect::<Vec<_>>(), ["--snapshot"], "{flags}");
}
