//! Issue 12, real inputs: workloads count as their pods, addresses for pods without
//! one, `-f -` and `-R`.

use std::io::Write;
use std::process::Stdio;

use crate::support::{palisade, repo};

/// Runs `palisade args` with `stdin` piped in; (exit code, stdout, stderr).
fn piped(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = palisade()
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn example() -> String {
    std::fs::read_to_string(repo().join("examples/workloads/app.yaml")).unwrap()
}

#[test]
fn issue_12_simulate_from_stdin_shows_one_row_per_workload_with_its_replicas() {
    let (code, out, err) = piped(&["simulate", "-f", "-", "--port", "5432"], &example());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains("5 pod(s) without status.podIP"),
        "the first line says addresses are simulated: {out}"
    );
    let row = |name: &str| {
        out.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row {name}: {out}"))
            .split_whitespace()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
    };
    // Columns: 1 shop/db, 2 shop/web (reversed: to web, to db).
    assert_eq!(
        row("shop/web (Deployment x3)"),
        ["✓", "✓"],
        "web reaches db on pg"
    );
    assert_eq!(
        row("shop/db (StatefulSet x2)"),
        ["✓", "✗"],
        "db replicas may not reach each other"
    );
}

#[test]
fn issue_12_simulate_json_keeps_pod_results_and_adds_workloads_and_addresses() {
    let (code, out, err) = piped(
        &["simulate", "-f", "-", "--port", "5432", "--output", "json"],
        &example(),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 5 * 4, "every ordered pair of the 5 pods");
    let mut keys: Vec<&String> = results[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["from", "reason", "to", "verdict"]);
    let web = v["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "shop/web")
        .unwrap();
    assert_eq!(web["kind"], "Deployment");
    assert_eq!(web["replicas"], 3);
    assert_eq!(web["pods"].as_array().unwrap().len(), 3);
    let addrs = v["simulatedAddresses"]["shop/web-0"].as_array().unwrap();
    assert!(
        addrs[0].as_str().unwrap().starts_with("10.244."),
        "{addrs:?}"
    );
    assert!(
        addrs[1].as_str().unwrap().starts_with("fd00:10:244:"),
        "{addrs:?}"
    );
    assert!(
        err.contains("simulated addresses"),
        "the note on stderr: {err}"
    );
}

#[test]
fn issue_12_explain_takes_a_workload_name_and_says_which_pod_it_used() {
    let (code, out, err) = piped(
        &[
            "explain",
            "-f",
            "-",
            "--from",
            "shop/db",
            "--to",
            "shop/db-1",
            "--port",
            "5432",
        ],
        &example(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("explaining for its pod shop/db-0"), "{out}");
    assert!(
        out.contains("shop/db-0 -> shop/db-1 TCP/5432: DENIED"),
        "a db replica may not reach another: {out}"
    );
}

#[test]
fn issue_12_a_directory_is_read_one_level_unless_recursive_and_says_what_it_skipped() {
    let dir = std::env::temp_dir().join(format!("palisade-cli-recursive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("team")).unwrap();
    std::fs::write(dir.join("app.yaml"), example()).unwrap();
    std::fs::write(
        dir.join("team/more.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: extra, namespace: shop}\nspec:\n  selector: {matchLabels: {app: extra}}\n  template:\n    metadata: {labels: {app: extra}}\n    spec: {containers: [{name: c, image: x}]}\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = palisade()
            .args(["validate", "-f"])
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap();
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (flat, flat_err) = run(&[]);
    let (deep, _) = run(&["-R"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(flat.contains("counted as 5 pod(s)"), "{flat}");
    assert!(
        flat_err.contains("team not read: it is a subdirectory (pass -R"),
        "{flat_err}"
    );
    assert!(deep.contains("3 workload(s) counted as 6 pod(s)"), "{deep}");
}
