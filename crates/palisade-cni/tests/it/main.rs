//! Runs the real `palisade-cni` binary against a fake agent on a unix socket.
//! The fake is the agent's counterpart and lives only here.

mod chain;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use palisade_api::{Reply, Request};
use serde_json::{json, Value};

/// How the fake agent behaves on each connection.
#[derive(Clone, Copy)]
enum Fake {
    Confirm,
    Refuse,
    Silent,
}

/// Serves `n` connections on a fresh socket, forwarding each request to the channel.
fn fake_agent(dir: &Path, mode: Fake, n: usize) -> (PathBuf, mpsc::Receiver<Request>) {
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let stream = stream.unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            let req: Request = serde_json::from_str(&line).unwrap();
            tx.send(req).unwrap();
            let resp = match mode {
                Fake::Confirm => Reply::in_force(42),
                Fake::Refuse => Reply::error("compile error"),
                Fake::Silent => {
                    thread::sleep(Duration::from_secs(3));
                    continue;
                }
            };
            let mut s = &stream;
            writeln!(s, "{}", serde_json::to_string(&resp).unwrap()).unwrap();
        }
    });
    (path, rx)
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "lo", "mac": "00:00:00:00:00:00"},
            {"name": "eth0", "mac": "aa:00:00:00:00:02", "sandbox": "/run/netns/p1"}
        ],
        "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn conf(socket: &Path, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0", "name": "lab", "type": "palisade-cni",
        "agentSocket": socket, "timeoutMs": 500, "prevResult": prev_result(),
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// Runs the plugin; returns (exit success, stdout).
fn plugin(cmd: &str, conf: &Value) -> (bool, String) {
    plugin_raw(cmd, conf.to_string().into_bytes())
}

/// Runs the plugin with `stdin` as is; returns (exit success, stdout). The plugin may
/// stop reading early (that is the point of a bound), so a short write is expected.
fn plugin_raw(cmd: &str, stdin: Vec<u8>) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-cni"))
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/run/netns/p1")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

fn error_code(stdout: &str) -> u64 {
    let v: Value = serde_json::from_str(stdout).expect("error JSON on stdout");
    for k in ["cniVersion", "code", "msg", "details"] {
        assert!(v.get(k).is_some(), "error object lacks {k}: {stdout}");
    }
    v["code"].as_u64().unwrap()
}

#[test]
fn add_registers_the_host_veth_and_returns_prev_result_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Confirm, 1);
    let (ok, out) = plugin("ADD", &conf(&sock, json!({})));
    assert!(ok, "ADD failed: {out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), prev_result());
    let Request::Register(e) = rx.recv_timeout(Duration::from_secs(2)).unwrap() else {
        panic!("expected register")
    };
    assert_eq!((e.namespace.as_str(), e.pod.as_str()), ("x", "a"));
    assert_eq!(e.host_ifname, "lo");
    assert_eq!(e.container_id, "c1");
    assert_eq!(
        e.ips,
        vec!["10.244.0.5".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn add_fails_closed_with_try_again_when_agent_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = plugin("ADD", &conf(&dir.path().join("nobody.sock"), json!({})));
    assert!(!ok);
    assert_eq!(error_code(&out), 11);
}

#[test]
fn add_fails_open_when_configured_and_agent_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = plugin(
        "ADD",
        &conf(
            &dir.path().join("nobody.sock"),
            json!({"failPolicy": "open"}),
        ),
    );
    assert!(ok, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), prev_result());
}

#[test]
fn add_times_out_when_agent_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, _rx) = fake_agent(dir.path(), Fake::Silent, 1);
    let start = std::time::Instant::now();
    let (ok, out) = plugin("ADD", &conf(&sock, json!({"timeoutMs": 200})));
    assert!(!ok);
    assert_eq!(error_code(&out), 11);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "timeout not honoured"
    );
}

#[test]
fn add_fails_when_agent_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, _rx) = fake_agent(dir.path(), Fake::Refuse, 1);
    let (ok, out) = plugin("ADD", &conf(&sock, json!({})));
    assert!(!ok);
    assert_eq!(error_code(&out), 100);
}

#[test]
fn add_without_prev_result_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = plugin(
        "ADD",
        &conf(&dir.path().join("x.sock"), json!({"prevResult": null})),
    );
    assert!(!ok);
    assert_eq!(error_code(&out), 7);
}

#[test]
fn add_rejects_unsupported_cni_version() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = plugin(
        "ADD",
        &conf(&dir.path().join("x.sock"), json!({"cniVersion": "0.3.1"})),
    );
    assert!(!ok);
    assert_eq!(error_code(&out), 1);
}

#[test]
fn del_unregisters() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Confirm, 1);
    let (ok, out) = plugin("DEL", &conf(&sock, json!({})));
    assert!(ok, "{out}");
    assert!(out.is_empty());
    let req = rx.recv_timeout(Duration::from_secs(2)).unwrap();
    assert!(matches!(req, Request::Unregister(e) if e.host_ifname == "lo"));
}

#[test]
fn del_succeeds_when_agent_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = plugin("DEL", &conf(&dir.path().join("nobody.sock"), json!({})));
    assert!(ok, "{out}");
}

#[test]
fn check_asks_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Confirm, 1);
    let (ok, out) = plugin("CHECK", &conf(&sock, json!({})));
    assert!(ok, "{out}");
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(2)).unwrap(),
        Request::Check(_)
    ));
}

#[test]
fn version_lists_1_0_0() {
    let (ok, out) = plugin("VERSION", &json!({}));
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.0.0")));
}

// Issue 8: an address in prevResult that did not parse was dropped and ADD registered
// the pod without it.
#[test]
fn issue_8_add_with_an_unparseable_address_fails_and_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Confirm, 1);
    let mut prev = prev_result();
    prev["ips"] = json!([
        {"address": "10.244.0.5/24", "interface": 1},
        {"address": "fd00::zz/64", "interface": 1}
    ]);
    let (ok, out) = plugin("ADD", &conf(&sock, json!({ "prevResult": prev })));
    assert!(!ok, "ADD must fail: {out}");
    assert_eq!(error_code(&out), 6);
    assert!(out.contains("ips[1]"), "the error names the field: {out}");
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing may be registered"
    );
}

#[test]
fn add_without_any_address_for_the_container_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Confirm, 1);
    let mut prev = prev_result();
    prev["ips"] = json!([]);
    let (ok, out) = plugin("ADD", &conf(&sock, json!({ "prevResult": prev })));
    assert!(!ok, "ADD must fail: {out}");
    assert_eq!(error_code(&out), 7);
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

/// A valid configuration padded past the stdin bound with an unknown field.
fn oversized(socket: &Path) -> Vec<u8> {
    let mut c = conf(socket, json!({}));
    c["padding"] = json!("x".repeat(palisade_cni::plugin::MAX_STDIN + 16));
    c.to_string().into_bytes()
}

// Issue 8: "a 300 MB CNI stdin was read whole".
#[test]
fn issue_8_add_past_the_stdin_bound_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Confirm, 1);
    let (ok, out) = plugin_raw("ADD", oversized(&sock));
    assert!(!ok, "ADD must fail: {out}");
    assert_eq!(error_code(&out), 7);
    assert!(out.contains("larger than 1024 KiB"), "{out}");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn add_at_the_stdin_bound_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Confirm, 1);
    let mut c = conf(&sock, json!({}));
    let base = c.to_string().len() + r#","padding":"""#.len();
    c["padding"] = json!("x".repeat(palisade_cni::plugin::MAX_STDIN - base));
    let bytes = c.to_string().into_bytes();
    assert_eq!(bytes.len(), palisade_cni::plugin::MAX_STDIN);
    let (ok, out) = plugin_raw("ADD", bytes);
    assert!(ok, "{out}");
    assert!(rx.recv_timeout(Duration::from_secs(2)).is_ok());
}

// Issue 8: DEL succeeds whenever the CNI spec says it must, even for input it cannot
// fully parse; the registration is then named by the container id alone.
#[test]
fn issue_8_del_with_a_config_it_cannot_decode_still_unregisters_by_container_id() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Confirm, 1);
    let broken = conf(
        &sock,
        json!({"cniVersion": 5, "failPolicy": "sideways", "prevResult": {"interfaces": "none"}}),
    );
    let (ok, out) = plugin("DEL", &broken);
    assert!(ok, "DEL must succeed: {out}");
    let Request::Unregister(e) = rx.recv_timeout(Duration::from_secs(2)).unwrap() else {
        panic!("expected unregister")
    };
    assert_eq!((e.namespace.as_str(), e.pod.as_str()), ("x", "a"));
    assert_eq!(e.container_id, "c1");
    assert_eq!(e.host_ifname, "", "no interface is guessed");
}

#[test]
fn issue_8_del_with_garbage_or_oversized_stdin_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Confirm, 1);
    let (ok, out) = plugin_raw("DEL", b"{not json".to_vec());
    assert!(ok, "DEL of garbage must succeed: {out}");
    let (ok, out) = plugin_raw("DEL", oversized(&sock));
    assert!(ok, "DEL past the bound must succeed: {out}");
    // Past the bound the configuration is not read, so its agentSocket is not used.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn del_without_prev_result_unregisters_by_container_id() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, rx) = fake_agent(dir.path(), Fake::Refuse, 1);
    let (ok, out) = plugin("DEL", &conf(&sock, json!({"prevResult": null})));
    assert!(ok, "a refused DEL (already gone) still succeeds: {out}");
    let req = rx.recv_timeout(Duration::from_secs(2)).unwrap();
    assert!(
        matches!(req, Request::Unregister(e) if e.host_ifname.is_empty() && e.container_id == "c1")
    );
}
