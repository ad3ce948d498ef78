//! The CLI against a fake agent: a reply that does not decode is an error naming the
//! field, never an empty table or empty output (no root needed).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Output;
use std::thread;

use crate::support::palisade;

/// Serves one connection on a fresh socket: reads the request line, answers `reply`
/// (which may hold several lines), closes. Returns the socket and the request seen.
fn fake_agent(name: &str, reply: String) -> (PathBuf, thread::JoinHandle<String>) {
    let dir = std::env::temp_dir().join(format!("palisade-cli-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        let mut s = &stream;
        let _ = s.write_all(reply.as_bytes());
        line
    });
    (path, server)
}

fn cli(args: &[&str], name: &str, reply: &str) -> (Output, String) {
    let (socket, server) = fake_agent(name, reply.to_string());
    let out = palisade()
        .args(args)
        .arg("--socket")
        .arg(&socket)
        .output()
        .expect("running palisade");
    let request = server.join().unwrap();
    let _ = std::fs::remove_dir_all(socket.parent().unwrap());
    (out, request)
}

fn status_reply(ifindex: &str) -> String {
    format!(
        r#"{{"ok":true,"data":{{"passes":2,"generation":3,"last_pass_stages":{{"load":0.0,"compile":0.0,"attach":0.0,"sync":0.0}},"last_error":null,"errors":[],"warnings":[],"endpoints":{{"x/a":{{"interface":"veth1","ifindex":{ifindex},"ips":["10.0.0.1"],"generation_in_force":3,"enforced":true}}}},"datapath":{{"events":null,"revoke_established":null,"policy_epoch":null,"pin_root":"/x","adopted_pins":false,"endpoints_in_kernel":1,"policy_entries":0}}}}}}"#
    ) + "\n"
}

#[test]
fn endpoint_list_shows_a_well_formed_status_and_refuses_a_malformed_one() {
    let (out, request) = cli(&["endpoint", "list"], "list-ok", &status_reply("7"));
    assert!(request.contains(r#""op":"status""#), "{request}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("x/a") && stdout.contains("veth1") && stdout.contains("gen 3"),
        "{stdout}"
    );

    let (out, _) = cli(
        &["endpoint", "list"],
        "list-bad",
        &status_reply(r#""seven""#),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a malformed status was accepted: {out:?}"
    );
    assert!(
        stderr.contains("data.endpoints.x/a.ifindex"),
        "the error does not name the field: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn metrics_that_are_not_text_are_an_error_not_empty_output() {
    let (out, _) = cli(
        &["metrics"],
        "metrics-ok",
        "{\"ok\":true,\"data\":\"# HELP x\\n\"}\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "# HELP x\n");

    let (out, _) = cli(
        &["metrics"],
        "metrics-bad",
        "{\"ok\":true,\"data\":{\"x\":1}}\n",
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_flows_line_that_is_not_a_record_stops_with_an_error() {
    let record = r#"{"time":"2026-01-01T00:00:00.000Z","pod":"x/a","direction":"egress","src":"x/a","dst":"10.0.0.9","src_ip":"10.0.0.1","dst_ip":"10.0.0.9","src_port":1,"dst_port":80,"protocol":"TCP","verdict":"deny","reason":"policy-deny","explanation":"denied"}"#;
    let bad = record.replace(r#""verdict":"deny""#, r#""verdict":"dropped""#);
    let (out, request) = cli(
        &["flows", "--verdict", "deny"],
        "flows",
        &format!("{record}\n{bad}\n"),
    );
    assert!(request.contains(r#""verdict":"deny""#), "{request}");
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{record}\n"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a record"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_verdict_filter_other_than_allow_or_deny_is_refused_before_asking() {
    let out = palisade()
        .args([
            "flows",
            "--verdict",
            "allowed",
            "--socket",
            "/nonexistent/agent.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be allow or deny"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One HTTP/1.1 request to `addr`; the whole reply.
fn http_get(addr: &str, request_line: &str) -> String {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{request_line}\r\nHost: x\r\nUser-Agent: test\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn metrics_listen_serves_the_agents_metrics_over_http_asking_it_at_each_scrape() {
    let dir =
        std::env::temp_dir().join(format!("palisade-cli-metrics-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // A fake agent answering two scrapes with different counters.
    let agent = thread::spawn(move || {
        for n in 1..=2 {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            assert!(line.contains(r#""op":"metrics""#), "{line}");
            let body = format!(
                "# TYPE palisade_reconcile_passes counter\\npalisade_reconcile_passes_total {n}\\n"
            );
            let mut s = &stream;
            writeln!(s, "{{\"ok\":true,\"data\":\"{body}\"}}").unwrap();
        }
    });
    let mut child = palisade()
        .args(["metrics", "--listen", "127.0.0.1:0", "--socket"])
        .arg(&socket)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .split_whitespace()
        .nth(6)
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();

    for n in 1..=2 {
        let reply = http_get(&addr, "GET /metrics HTTP/1.1");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(
            reply.contains("Content-Type: text/plain; version=0.0.4"),
            "{reply}"
        );
        assert!(
            reply.ends_with(&format!("palisade_reconcile_passes_total {n}\n")),
            "{reply}"
        );
    }
    agent.join().unwrap();
    assert!(http_get(&addr, "GET /secrets HTTP/1.1").starts_with("HTTP/1.1 404"));
    assert!(http_get(&addr, "POST /metrics HTTP/1.1").starts_with("HTTP/1.1 405"));
    // The agent away: a scrape fails visibly (503 naming the socket), not an empty page.
    std::fs::remove_file(&socket).unwrap();
    let reply = http_get(&addr, "GET /metrics HTTP/1.1");
    assert!(
        reply.starts_with("HTTP/1.1 503") && reply.contains("agent.sock"),
        "{reply}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
