//! Runs the real `palisade-cni` binary against a fake agent on a unix socket.
//! The fake is the agent's counterpart and lives only here.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use palisade_cni::protocol::{Request, Response};
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
                Fake::Confirm => Response::in_force(42),
                Fake::Refuse => Response::failed("compile error"),
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
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
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
