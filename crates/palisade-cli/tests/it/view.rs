//! `palisade view` (issue 12, "A page people look at"): the page's data is the
//! `simulate -o json` document, `--serve` stays on loopback and explains on demand,
//! the bundle is built from its sources, and the page works in headless Chromium.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_testkit::{Context, Decision, Need};
use serde_json::Value;

use crate::support::{palisade, repo, run};

const AWS: &str = "examples/aws-walkthrough";

/// The data document embedded in a page.
pub fn page_data(html: &str) -> Value {
    let start = html
        .find("<script id=\"palisade-data\" type=\"application/json\">")
        .expect("the page embeds its data")
        + "<script id=\"palisade-data\" type=\"application/json\">".len();
    let end = start + html[start..].find("</script>").expect("data closed");
    serde_json::from_str(&html[start..end]).expect("the embedded data is JSON")
}

fn simulate_json(dir: &Path, port: u16) -> Value {
    let out = run(palisade()
        .current_dir(repo())
        .args(["simulate", "-f"])
        .arg(dir)
        .args(["--port", &port.to_string(), "-o", "json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn explain_text(from: &str, to: &str, port: u16) -> String {
    // `pod/`: the walkthrough has a pod and a Service named default/demo-app.
    let to = &format!("pod/{to}");
    let out = run(palisade().current_dir(repo()).args([
        "explain",
        "-f",
        AWS,
        "--from",
        from,
        "--to",
        to,
        "--port",
        &port.to_string(),
    ]));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn view_embeds_the_simulate_json_and_the_explain_text_of_every_pair() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aws.html");
    let out = run(palisade()
        .current_dir(repo())
        .args(["view", "-f", AWS, "--port", "80", "--port", "53", "-o"])
        .arg(&file));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("5 pods, 40 pairs on TCP/80 TCP/53"), "{said}");
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(air_gapped(&html), "the page loads nothing from a network");
    let data = page_data(&html);
    assert_eq!(data["matrices"][0], simulate_json(Path::new(AWS), 80));
    assert_eq!(data["matrices"][1], simulate_json(Path::new(AWS), 53));
    assert_eq!(data["explainMode"], "embedded");
    let results = data["matrices"][0]["results"].as_array().unwrap();
    for (i, r) in results.iter().enumerate() {
        let (from, to) = (r["from"].as_str().unwrap(), r["to"].as_str().unwrap());
        assert_eq!(
            data["explain"][0][i].as_str().unwrap(),
            explain_text(from, to, 80),
            "{from} -> {to}"
        );
    }
    let pods = data["pods"].as_array().unwrap();
    let demo = pods
        .iter()
        .find(|p| p["name"] == "default/demo-app")
        .unwrap();
    assert!(
        demo["policies"]
            .as_array()
            .unwrap()
            .contains(&Value::from("NetworkPolicy default/demo-app-deny-all")),
        "{demo}"
    );
    assert!(data["diff"].is_null(), "view fills no diff itself");
}

/// No element of the page fetches anything: no `src=`/`href=` to a URL outside the
/// bundle's own strings (cytoscape mentions its home page in comments and errors).
fn air_gapped(html: &str) -> bool {
    !["<script src", "<link ", "<img ", "@import", "url(http"]
        .iter()
        .any(|t| html.contains(t))
}

#[test]
fn view_embeds_no_explain_text_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aws.html");
    run(palisade()
        .current_dir(repo())
        .args(["view", "-f", AWS, "--explain-limit", "19", "-o"])
        .arg(&file));
    let data = page_data(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(data["explainMode"], "none");
    assert!(data["explain"].is_null());
    assert_eq!(data["matrices"][0]["results"].as_array().unwrap().len(), 20);
}

#[test]
fn view_serve_refuses_a_non_loopback_address() {
    let out = palisade()
        .current_dir(repo())
        .args(["view", "-f", AWS, "--serve", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

/// Kills the served child (by its own handle) when dropped, also on panic.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn view_serve_answers_the_page_and_explains_on_demand_on_loopback() {
    let mut child = Child(
        palisade()
            .current_dir(repo())
            .args(["view", "-f", AWS, "--explain-limit", "0"])
            .args(["--serve", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("serving http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let (status, body) = get(&addr, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let data = page_data(&body);
    assert_eq!(data["explainMode"], "serve");
    assert_eq!(data["matrices"][0], simulate_json(Path::new(AWS), 80));
    let (status, text) = get(
        &addr,
        "/explain?from=default%2Fclient-two&to=default%2Fdemo-app&port=80&protocol=TCP",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        text,
        explain_text("default/client-two", "default/demo-app", 80)
    );
    let (status, text) = get(
        &addr,
        "/explain?from=default%2Fnope&to=default%2Fdemo-app&port=80&protocol=TCP",
    );
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert!(text.contains("default/nope"), "{text}");
    let (status, _) = get(&addr, "/explain?from=a&to=b&port=x&protocol=TCP");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
}

/// The npm packages' directory (scripts/view-npm.sh's cache), node and chromium, or
/// the testkit's decision (fail in CI or as root, skip for a developer).
fn front_end_tools() -> Option<PathBuf> {
    let needs = [
        Need::Program {
            name: "node",
            package: "nodejs",
        },
        Need::Program {
            name: "chromium",
            package: "chromium",
        },
    ];
    let ctx = Context::current();
    let mut missing = palisade_testkit::missing(&needs, ctx);
    let out = Command::new("bash")
        .arg(repo().join("scripts/view-npm.sh"))
        .arg("--where")
        .output()
        .unwrap();
    if !out.status.success() {
        missing.push(
            "needs the view's npm packages (run scripts/view-npm.sh, as scripts/setup.sh does)"
                .into(),
        );
    }
    let thread = std::thread::current();
    match palisade_testkit::decide(thread.name().unwrap_or("view"), &missing, ctx) {
        Decision::Run => Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())),
        Decision::Skip(m) => {
            let _ = writeln!(std::io::stderr(), "{m}");
            None
        }
        Decision::Fail(m) => panic!("{m}"),
    }
}

#[test]
fn view_bundle_is_built_from_its_sources() {
    if front_end_tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let built = dir.path().join("bundle.js");
    let out = Command::new("bash")
        .arg(repo().join("scripts/view-bundle.sh"))
        .arg(&built)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked_in = std::fs::read(repo().join("crates/palisade-cli/view/bundle.js")).unwrap();
    assert!(
        std::fs::read(&built).unwrap() == checked_in,
        "crates/palisade-cli/view/bundle.js is not what its sources build: run scripts/view-bundle.sh and commit the result"
    );
}

/// 500 pods in 10 namespaces and 200 NetworkPolicies: each policy isolates one app
/// and lets the next app in (on 80) from its own namespace.
fn big_input(dir: &Path) {
    let mut y = String::new();
    for n in 0..10 {
        y += &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns{n}\n---\n");
        for p in 0..50 {
            y += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod{p}\n  namespace: ns{n}\n  labels:\n    app: a{}\nspec:\n  containers:\n  - name: c\n    image: nginx\n---\n",
                p % 20
            );
        }
        for k in 0..20 {
            y += &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-a{k}\n  namespace: ns{n}\nspec:\n  podSelector:\n    matchLabels:\n      app: a{k}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: a{}\n    ports:\n    - port: 80\n---\n",
                (k + 1) % 20
            );
        }
    }
    std::fs::write(dir.join("big.yaml"), y).unwrap();
}

/// Where the test leaves its screenshots: beside the test binary, under the target dir.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(2).unwrap().to_path_buf();
    let dir = target.join("view-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn view_page_in_headless_chromium() {
    let Some(modules) = front_end_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let aws = dir.path().join("aws.html");
    run(palisade()
        .current_dir(repo())
        .args(["view", "-f", AWS, "-o"])
        .arg(&aws));
    let input = dir.path().join("big");
    std::fs::create_dir(&input).unwrap();
    big_input(&input);
    let big = dir.path().join("big.html");
    let t = Instant::now();
    let out = run(palisade()
        .arg("view")
        .arg("-f")
        .arg(input)
        .arg("-o")
        .arg(&big));
    eprintln!(
        "view: built the 500-pod page in {} ms ({} bytes): {}",
        t.elapsed().as_millis(),
        std::fs::metadata(&big).unwrap().len(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let expected = simulate_json(Path::new(AWS), 80);
    let results = expected["results"].as_array().unwrap();
    let denied = results.iter().find(|r| r["verdict"] == "deny").unwrap();
    let (from, to) = (
        denied["from"].as_str().unwrap(),
        denied["to"].as_str().unwrap(),
    );
    let shots = artifacts();
    let spec = serde_json::json!({
        "chromium": "/usr/bin/chromium",
        "userDataDir": dir.path().join("chromium-profile"),
        "aws": {
            "page": aws,
            "screenshot": shots.join("aws-walkthrough.png"),
            "screenshotClicked": shots.join("aws-walkthrough-denied-cell.png"),
            "click": {"from": from, "to": to},
            "searches": ["app=client-two", "demo-app-deny-all", "another"],
        },
        "big": {"page": big, "screenshot": shots.join("500-pods.png")},
    });
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let out = Command::new("node")
        .arg(repo().join("crates/palisade-cli/view/test/page.mjs"))
        .arg(spec_file)
        .env("NODE_PATH", modules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "node page.mjs failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &seen["aws"];
    assert_eq!(a["consoleErrors"], serde_json::json!([]), "console errors");
    assert_eq!(
        a["requests"],
        serde_json::json!([]),
        "the page fetched something"
    );
    // Every pair of the matrix shows the simulator's verdict.
    let cells = a["cells"].as_array().unwrap();
    for r in results {
        let (f, t) = (r["from"].as_str().unwrap(), r["to"].as_str().unwrap());
        let mark = if r["verdict"] == "allow" {
            "✓"
        } else {
            "✗"
        };
        let shown: Vec<&Value> = cells.iter().filter(|c| c[0] == f && c[1] == t).collect();
        assert_eq!(shown.len(), 1, "{f} -> {t} drawn once");
        assert_eq!(shown[0][2], mark, "{f} -> {t}");
    }
    assert_eq!(cells.len(), 25, "5 x 5 cells, the diagonal included");
    // The denied cell's panel names the deciding policies, in explain's words.
    let reason = denied["reason"].as_str().unwrap();
    let policies: Vec<&str> = reason
        .split([' ', ',', ';'])
        .filter(|w| w.contains('/'))
        .collect();
    assert!(!policies.is_empty(), "no policy named in {reason}");
    assert_eq!(a["clicked"]["verdict"], "DENIED");
    assert_eq!(a["clicked"]["deciding"], reason);
    for p in &policies {
        assert!(
            a["clicked"]["text"].as_str().unwrap().contains(p),
            "the panel's explain text names {p}"
        );
    }
    assert_eq!(a["clicked"]["text"], explain_text(from, to, 80));
    // A label, a policy (the pods it selects), a name: both axes keep the matching pods.
    for (q, pods) in [
        ("app=client-two", vec!["default/client-two"]),
        ("demo-app-deny-all", vec!["default/demo-app"]),
        // the name of another-ns/another-client, a policy selecting demo-app
        (
            "another",
            vec!["another-ns/another-client", "default/demo-app"],
        ),
    ] {
        assert_eq!(
            a["searches"][q]["rows"],
            serde_json::json!(pods),
            "search {q}"
        );
        assert_eq!(
            a["searches"][q]["columns"],
            serde_json::json!(pods),
            "search {q}"
        );
    }
    let allowed = results.iter().filter(|r| r["verdict"] == "allow").count();
    assert_eq!(
        a["graphEdges"],
        allowed.to_string(),
        "one graph edge per allowed pair"
    );
    // 500 pods and 200 policies: the goal is 2 s. The bound asserted here is
    // generous (10 s) since this machine's 2 cores are shared; the figure is printed.
    let b = &seen["big"];
    assert_eq!(b["consoleErrors"], serde_json::json!([]), "console errors");
    assert!(
        b["summary"]
            .as_str()
            .unwrap()
            .starts_with("500 pods, 249500 pairs"),
        "{}",
        b["summary"]
    );
    assert!(
        b["cellsDrawn"].as_u64().unwrap() > 100,
        "{}",
        b["cellsDrawn"]
    );
    let ms = b["renderedMs"].as_u64().unwrap();
    eprintln!(
        "view: 500 pods x 200 policies rendered in {ms} ms in Chromium (goal 2000 ms; {} ms from navigation to ready); screenshots in {}",
        b["wallMs"],
        shots.display()
    );
    assert!(ms < 10_000, "500-pod page took {ms} ms to render");
}
