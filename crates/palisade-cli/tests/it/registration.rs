//! Issue 8, "Registrations cannot switch enforcement off": the real agent in a lab, driven
//! through the real CNI plugin and its raw socket, checked with real packets.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::lab::{netns_of, pod_yaml, tcp_connects, write};
use crate::support::{cni_dir, palisade, privileged, run, LabGuard};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// `palisade lab up` with extra agent flags (through `PALISADE_LAB_AGENT_ARGS`, set on
/// that command only).
fn lab_up(files: &[PathBuf], agent_args: &str) -> LabGuard {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let guard = LabGuard {
        name: format!("g{}x{n}", std::process::id() % 100_000),
    };
    let mut cmd = palisade();
    cmd.args(["lab", "up", "--name", &guard.name, "--cni-bin"])
        .arg(cni_dir())
        .env("PALISADE_LAB_AGENT_ARGS", agent_args);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    run(&mut cmd);
    guard
}

/// One raw request line to the agent, one reply line back.
fn agent(socket: &Path, req: &Value) -> Value {
    let mut s = UnixStream::connect(socket).expect("agent socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

fn endpoint(op: &str, pod: &str, container: &str, host_ifname: &str, ip: &str) -> Value {
    json!({
        "op": op, "namespace": "default", "pod": pod, "container_id": container,
        "netns": "/run/netns/none", "host_ifname": host_ifname, "ips": [ip],
    })
}

/// The lab's record of a pod: (host interface, container id).
fn pod_record(lab: &LabGuard, pod: &str) -> (String, String) {
    let st = lab.state();
    let rec = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == pod)
        .unwrap_or_else(|| panic!("pod {pod} not in lab"))
        .clone();
    (
        rec["host_ifname"].as_str().unwrap().to_string(),
        rec["attachment"]["container_id"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

/// Runs the real `palisade-cni` binary against the lab's agent, as the runtime would
/// for pod `pod` with sandbox `container`; returns (success, stdout).
fn cni(lab: &LabGuard, command: &str, pod: &str, container: &str, prev: &Value) -> (bool, String) {
    cni_in(lab, command, pod, container, prev, None)
}

/// CNI CHECK of a lab pod as the runtime would run it: in the node namespace, with the
/// pod's own sandbox id and chain result.
fn cni_check(lab: &LabGuard, pod: &str) -> (bool, String) {
    let st = lab.state();
    let rec = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == format!("default/{pod}"))
        .unwrap()
        .clone();
    let node = palisade_lab::netns::NetNs::open(st["node_netns"].as_str().unwrap());
    cni_in(
        lab,
        "CHECK",
        pod,
        rec["attachment"]["container_id"].as_str().unwrap(),
        &rec["cni_result"],
        Some(&node),
    )
}

fn cni_in(
    lab: &LabGuard,
    command: &str,
    pod: &str,
    container: &str,
    prev: &Value,
    netns: Option<&palisade_lab::netns::NetNs>,
) -> (bool, String) {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "lab", "type": "palisade-cni",
        "agentSocket": lab.socket(), "timeoutMs": 5000, "prevResult": prev,
    });
    let mut cmd = Command::new(cni_dir().join("palisade-cni"));
    if let Some(ns) = netns {
        ns.enter_on_exec(&mut cmd).unwrap();
    }
    let mut child = cmd
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("palisade-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `palisade endpoint diff`: (exit success, stdout).
fn diff(lab: &LabGuard, pod: &str) -> (bool, String) {
    let out = palisade()
        .args(["endpoint", "diff", pod, "--socket"])
        .arg(lab.socket())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// victim (deny all ingress), attacker and client (no policy); all serve TCP/80.
fn three_pods(dir: &Path, net: u8) -> PathBuf {
    let ip = |n: u8| format!("10.244.{net}.{n}");
    write(
        dir,
        "cluster.yaml",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n".to_string(),
            pod_yaml("victim", "victim", &ip(10), &[(80, "TCP")]),
            pod_yaml("attacker", "attacker", &ip(11), &[(80, "TCP")]),
            pod_yaml("client", "client", &ip(12), &[]),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: victim-closed\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: victim\n  policyTypes: [Ingress]\n".to_string(),
        ]
        .join("---\n"),
    )
}

/// Whether any of `tries` connections from `client` to `to` gets through.
fn any_connects(lab: &LabGuard, to: SocketAddr, tries: usize) -> usize {
    let client = netns_of(lab, "default/client");
    (0..tries)
        .filter(|_| tcp_connects(&client, to, Duration::from_millis(300)))
        .count()
}

// Issue 8: a registration naming another pod's host interface in prevResult, then
// deleted, removed that pod's programs: denied traffic passed 10/10 while `endpoint
// diff` said "matches". And `unregister` with an empty container id detached any pod.
#[test]
fn issue_8_a_registration_of_another_pods_interface_is_refused_and_its_del_leaves_the_victim_enforced(
) {
    if !privileged() {
        return;
    }
    let dir = tempfile_dir("stolen");
    let lab = lab_up(&[three_pods(&dir, 31)], "");
    let victim: SocketAddr = "10.244.31.10:80".parse().unwrap();
    let control: SocketAddr = "10.244.31.11:80".parse().unwrap();
    assert_eq!(any_connects(&lab, victim, 3), 0, "victim must be closed");
    assert_eq!(any_connects(&lab, control, 1), 1, "the prober must work");
    let (victim_if, victim_container) = pod_record(&lab, "default/victim");

    // The attacker's sandbox names the victim's host veth.
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": victim_if},
            {"name": "eth0", "sandbox": "/run/netns/none"}
        ],
        "ips": [{"address": "10.244.31.11/24", "interface": 1}]
    });
    let (ok, out) = cni(&lab, "ADD", "attacker", "evil", &prev);
    assert!(!ok, "the ADD must be refused: {out}");
    assert!(
        out.contains("already belongs to pod default/victim"),
        "the refusal names the owner: {out}"
    );
    let (ok, out) = cni(&lab, "DEL", "attacker", "evil", &prev);
    assert!(ok, "DEL always completes: {out}");

    // Unregistering the victim without its sandbox's id, or naming another interface.
    let (attacker_if, _) = pod_record(&lab, "default/attacker");
    for (container, ifname) in [
        ("", ""),
        ("", victim_if.as_str()),
        (victim_container.as_str(), attacker_if.as_str()),
    ] {
        let r = agent(
            &lab.socket(),
            &endpoint("unregister", "victim", container, ifname, "10.244.31.10"),
        );
        assert_eq!(
            r["ok"], false,
            "unregister ({container:?}, {ifname}) must fail: {r}"
        );
    }
    // A sandbox id that was never registered is a DEL of nothing: it completes (CNI
    // DEL must), and removes nothing (the victim is checked below).
    let r = agent(
        &lab.socket(),
        &endpoint("unregister", "victim", "wrong", &victim_if, "10.244.31.10"),
    );
    assert_eq!(r["ok"], true, "a DEL of an unknown sandbox completes: {r}");

    assert_eq!(
        any_connects(&lab, victim, 10),
        0,
        "denied traffic to the victim got through"
    );
    let (same, text) = diff(&lab, "default/victim");
    assert!(same, "the victim is enforced as desired: {text}");
    assert_eq!(any_connects(&lab, control, 1), 1, "the prober still works");
    std::fs::remove_dir_all(&dir).ok();
}

// Issue 8: `endpoint diff` said "matches" for an interface whose programs were gone,
// because it compared map entries only.
#[test]
fn issue_8_endpoint_diff_reports_a_detached_interface_and_the_next_pass_reattaches() {
    if !privileged() {
        return;
    }
    let dir = tempfile_dir("detached");
    let lab = lab_up(&[three_pods(&dir, 32)], "");
    let victim: SocketAddr = "10.244.32.10:80".parse().unwrap();
    assert_eq!(any_connects(&lab, victim, 3), 0, "victim must be closed");
    let (same, text) = diff(&lab, "default/victim");
    assert!(same, "{text}");

    // Detach behind the agent's back: unpinning a TCX link releases it.
    let out = run(palisade()
        .args(["endpoint", "get", "default/victim", "--json", "--socket"])
        .arg(lab.socket()));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ifindex = v["ifindex"].as_u64().expect("ifindex");
    let links = PathBuf::from(format!("/sys/fs/bpf/palisade-lab-{}/links", lab.name));
    for hook in ["from_pod", "to_pod"] {
        std::fs::remove_file(links.join(format!("{ifindex}-{hook}")))
            .unwrap_or_else(|e| panic!("unpinning {hook} of ifindex {ifindex}: {e}"));
    }
    // The kernel really lets the denied traffic through now (so the diff below is
    // about something real)...
    let deadline = Instant::now() + Duration::from_secs(10);
    while any_connects(&lab, victim, 1) == 0 {
        assert!(
            Instant::now() < deadline,
            "detaching did not open the victim"
        );
    }
    // ...and diff says so, naming both hooks, with a non-zero exit.
    let (same, text) = diff(&lab, "default/victim");
    assert!(!same, "diff must report the detached interface: {text}");
    for hook in ["from_pod", "to_pod"] {
        assert!(
            text.contains(&format!("{hook}: no program attached")),
            "{hook} missing from: {text}"
        );
    }

    // `endpoint list` does not call it in force either, and CNI CHECK fails.
    assert_eq!(list_state(&lab, "default/victim"), "DETACHED");
    let (ok, out) = cni_check(&lab, "victim");
    assert!(!ok, "CHECK of a detached pod must fail: {out}");
    assert!(out.contains("no program attached"), "{out}");

    // The next pass attaches again (drift repair) and diff matches again.
    sync(&lab);
    let (same, text) = diff(&lab, "default/victim");
    assert!(same, "after a pass: {text}");
    assert!(list_state(&lab, "default/victim").starts_with("gen "));
    let (ok, out) = cni_check(&lab, "victim");
    assert!(ok, "CHECK after the repair: {out}");
    assert_eq!(any_connects(&lab, victim, 3), 0, "victim closed again");
    std::fs::remove_dir_all(&dir).ok();
}

// Issue 8: a registration whose pod never appears stayed in the state file forever.
#[test]
fn issue_8_a_registration_whose_pod_never_appears_expires() {
    if !privileged() {
        return;
    }
    let dir = tempfile_dir("ttl");
    let lab = lab_up(&[three_pods(&dir, 33)], "--registration-ttl-secs 1");
    let state = PathBuf::from(format!(
        "/run/palisade-lab/{}/agent/endpoints.json",
        lab.name
    ));
    let registered = |pod: &str| -> bool {
        let v: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        v.get(pod).is_some()
    };
    // A ghost registers on the node namespace's loopback (an interface nobody owns);
    // its ADD would wait for the pod, so the request is sent and left.
    let mut s = UnixStream::connect(lab.socket()).unwrap();
    writeln!(
        s,
        "{}",
        endpoint("register", "ghost", "g1", "lo", "10.244.33.99")
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !registered("default/ghost") {
        assert!(Instant::now() < deadline, "the ghost never registered");
    }
    // Passes (a sync each) expire it once it is older than the TTL.
    let deadline = Instant::now() + Duration::from_secs(20);
    while registered("default/ghost") {
        assert!(
            Instant::now() < deadline,
            "the ghost registration never expired"
        );
        sync(&lab);
    }
    drop(s);
    // Pods that are in the desired state are older than the TTL too, and stay.
    for pod in ["default/victim", "default/attacker", "default/client"] {
        assert!(registered(pod), "{pod} must not expire");
    }
    assert_eq!(
        any_connects(&lab, "10.244.33.10:80".parse().unwrap(), 3),
        0,
        "victim still closed"
    );
    std::fs::remove_dir_all(&dir).ok();
}

// A registered interface the agent cannot see may live in another namespace: an agent
// started in the wrong one must not drop registrations by unpinning live links (that
// would switch enforcement off for every pod).
#[test]
fn an_agent_in_the_wrong_namespace_keeps_every_pod_enforced() {
    if !privileged() {
        return;
    }
    let dir = tempfile_dir("wrongns");
    let lab = lab_up(&[three_pods(&dir, 34)], "");
    let victim: SocketAddr = "10.244.34.10:80".parse().unwrap();
    assert_eq!(any_connects(&lab, victim, 3), 0, "victim must be closed");
    let pid = lab.state()["agent"]["pid"].as_i64().expect("agent pid") as i32;
    // SAFETY: kill(2) on the agent this test's lab started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let state = PathBuf::from(format!("/run/palisade-lab/{}", lab.name));
    let socket = dir.join("wrong.sock");
    // The same state and pins, but this process's (root) network namespace.
    let mut wrong = palisade()
        .arg("agent")
        .arg("--manifests")
        .arg(state.join("manifests"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(state.join("agent"))
        .arg("--pin-root")
        .arg(format!("/sys/fs/bpf/palisade-lab-{}", lab.name))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    // Its first pass is done once it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(mut s) = UnixStream::connect(&socket) {
            writeln!(s, "{}", json!({"op": "status"})).unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            break serde_json::from_str::<Value>(&line).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the misplaced agent never answered"
        );
        std::thread::yield_now();
    };
    sync_at(&socket);
    let kept = status["data"]["endpoints"].get("default/victim").is_some();
    let open = any_connects(&lab, victim, 5);
    wrong.kill().unwrap();
    wrong.wait().unwrap();
    assert!(kept, "the victim's registration was dropped: {status}");
    assert_eq!(
        open, 0,
        "denied traffic got through while the agent was misplaced"
    );
    // Back in the right namespace, everything converges.
    run(&mut lab.cmd(&["start-agent"]));
    let (same, text) = diff(&lab, "default/victim");
    assert!(same, "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

// A new sandbox of the same pod on a new interface: the old interface keeps no entry
// (it drops everything instead of running tables nobody updates), and its pins are
// released once the kernel deletes it.
#[test]
fn a_new_sandbox_of_a_pod_leaves_the_old_interface_closed_and_releases_it_when_deleted() {
    if !privileged() {
        return;
    }
    let dir = tempfile_dir("resandbox");
    let lab = lab_up(&[three_pods(&dir, 35)], "");
    let victim: SocketAddr = "10.244.35.10:80".parse().unwrap();
    let control: SocketAddr = "10.244.35.11:80".parse().unwrap();
    let (old_if, _) = pod_record(&lab, "default/victim");
    let node = lab.state()["node_netns"].as_str().unwrap().to_string();
    let new_if = format!("nv{}", lab.name);
    let out = Command::new("ip")
        .args([
            "-n", &node, "link", "add", &new_if, "type", "veth", "peer", "name",
        ])
        .arg(format!("np{}", lab.name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old_ifindex = {
        let out = run(palisade()
            .args(["endpoint", "get", "default/victim", "--json", "--socket"])
            .arg(lab.socket()));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["ifindex"].as_u64().unwrap()
    };
    let victim_ns = netns_of(&lab, "default/victim");
    let victim_out = || tcp_connects(&victim_ns, control, Duration::from_millis(300));
    assert!(victim_out(), "the victim's egress is allowed by policy");
    let r = agent(
        &lab.socket(),
        &endpoint("register", "victim", "sandbox-2", &new_if, "10.244.35.10"),
    );
    assert_eq!(r["ok"], true, "{r}");
    let (same, text) = diff(&lab, "default/victim");
    assert!(same, "the new interface is enforced: {text}");
    // The old interface (still wired to the victim's namespace) now drops everything,
    // its allowed egress too: it is not enforced by stale tables.
    assert_eq!(any_connects(&lab, victim, 3), 0);
    assert!(
        !victim_out(),
        "the old interface still runs the pod's tables"
    );
    assert_eq!(any_connects(&lab, control, 1), 1, "the prober works");
    let links = PathBuf::from(format!("/sys/fs/bpf/palisade-lab-{}/links", lab.name));
    let pinned = || links.join(format!("{old_ifindex}-from_pod")).exists();
    assert!(
        pinned(),
        "the old interface keeps its programs while it exists"
    );
    let out = Command::new("ip")
        .args(["-n", &node, "link", "del", &old_if])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sync(&lab);
    assert!(!pinned(), "the deleted interface's pins were not released");
    std::fs::remove_dir_all(&dir).ok();
}

/// The IN FORCE column of `palisade endpoint list` for `pod`.
fn list_state(lab: &LabGuard, pod: &str) -> String {
    let out = run(palisade()
        .args(["endpoint", "list", "--socket"])
        .arg(lab.socket()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with(pod))
        .unwrap_or_else(|| panic!("{pod} not listed:\n{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    match cols.as_slice() {
        [.., "gen", g] => format!("gen {g}"),
        [.., last] => last.to_string(),
        [] => unreachable!(),
    }
}

/// One reconcile pass, now.
fn sync(lab: &LabGuard) {
    sync_at(&lab.socket());
}

fn sync_at(socket: &Path) {
    let r = agent(socket, &json!({"op": "sync"}));
    assert_eq!(r["ok"], true, "sync: {r}");
}

fn tempfile_dir(what: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("palisade-reg-{what}-{}-{n}", std::process::id()))
}
