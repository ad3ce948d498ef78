//! The lab end to end: real namespaces, the real agent and CNI plugin, real packets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::{palisade, privileged, repo, run, verdict, verdicts, LabGuard};

fn simulate(files: &[PathBuf], protocol: &str, port: u16, family: &str) -> serde_json::Value {
    let mut c = palisade();
    c.args([
        "simulate",
        "--output",
        "json",
        "--protocol",
        protocol,
        "--port",
        &port.to_string(),
        "--family",
        family,
    ]);
    for f in files {
        c.arg("-f").arg(f);
    }
    serde_json::from_slice(&run(&mut c).stdout).unwrap()
}

#[test]
fn walkthrough_is_enforced_on_real_packets_exactly_as_simulated() {
    if !privileged() {
        return;
    }
    let dir = repo().join("examples/aws-walkthrough");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let lab = LabGuard::up(&files[..1]);
    let probe = lab.probe("TCP", 80, None);
    assert!(
        verdicts(&probe).iter().all(|(_, _, v)| v == "allow"),
        "no policy yet: {probe}"
    );
    let mut applied = vec![files[0].clone()];
    for step in &files[1..] {
        lab.apply(step);
        applied.push(step.clone());
        for (proto, port) in [("TCP", 80), ("UDP", 53)] {
            let measured = lab.probe(proto, port, None);
            let simulated = simulate(&applied, proto, port, "4");
            assert_eq!(
                verdicts(&measured),
                verdicts(&simulated),
                "after {}: {proto}/{port} measured vs simulated",
                step.display()
            );
        }
    }
    // Spot checks of the walkthrough's story, so a wrong simulator cannot hide a bug.
    let tcp = lab.probe("TCP", 80, None);
    assert_eq!(
        verdict(&tcp, "default/client-one", "default/demo-app"),
        "allow"
    );
    assert_eq!(
        verdict(&tcp, "default/client-two", "default/demo-app"),
        "deny"
    );
    assert_eq!(
        verdict(&tcp, "another-ns/another-client", "default/demo-app"),
        "allow"
    );
    assert_eq!(
        verdict(&tcp, "default/client-one", "another-ns/another-client"),
        "deny"
    );
    let dns = lab.probe("UDP", 53, None);
    assert_eq!(
        verdict(&dns, "default/client-one", "kube-system/coredns"),
        "allow"
    );

    // The denies above reached the decision log, named by pod, policy and reason. The
    // agent drains the ring buffer at least every EVENT_POLL, so wait for the condition
    // (bounded), not for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(palisade()
            .args(["flows", "--verdict", "deny", "--socket"])
            .arg(lab.socket()));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|r| {
                r["src"] == "default/client-two"
                    && r["dst"] == "default/demo-app"
                    && r["reason"] == "policy-deny"
                    && r["explanation"]
                        .as_str()
                        .is_some_and(|e| e.contains("isolated for ingress"))
            });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no deny decision for client-two -> demo-app in:\n{text}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn ipv6_pairs_are_enforced_as_simulated() {
    if !privileged() {
        return;
    }
    let dir = repo().join("examples/dual-stack");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let lab = LabGuard::up(&files);
    // db accepts postgres only from api; api may egress only to db:5432 and outside.
    let port = 5432;
    let measured = lab.probe("TCP", port, Some("6"));
    let simulated = simulate(&files, "TCP", port, "6");
    let m = verdicts(&measured);
    assert!(!m.is_empty(), "no IPv6 pairs probed");
    assert!(
        m.iter().any(|(_, _, v)| v == "deny") && m.iter().any(|(_, _, v)| v == "allow"),
        "the example should both allow and deny: {m:?}"
    );
    assert_eq!(m, verdicts(&simulated));
}

pub(crate) fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

pub(crate) fn pod_yaml(name: &str, app: &str, ip: &str, ports: &[(u16, &str)]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {app}\nspec:\n  containers:\n  - name: c\n    image: x\n"
    );
    if !ports.is_empty() {
        s.push_str("    ports:\n");
        for (p, proto) in ports {
            s.push_str(&format!(
                "    - containerPort: {p}\n      protocol: {proto}\n"
            ));
        }
    }
    s.push_str(&format!("status:\n  podIP: {ip}\n"));
    s
}

pub(crate) fn netns_of(lab: &LabGuard, pod: &str) -> palisade_lab::netns::NetNs {
    let st = lab.state();
    let rec = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == pod)
        .unwrap_or_else(|| panic!("pod {pod} not in lab"));
    palisade_lab::netns::NetNs::open(rec["netns"].as_str().unwrap())
}

pub(crate) fn tcp_connects(
    ns: &palisade_lab::netns::NetNs,
    to: SocketAddr,
    timeout: Duration,
) -> bool {
    ns.run_in(move || TcpStream::connect_timeout(&to, timeout).is_ok())
        .unwrap()
}

fn generation_in_force(lab: &LabGuard, pod: &str) -> u64 {
    let out = run(palisade()
        .args(["endpoint", "get", pod, "--json", "--socket"])
        .arg(lab.socket()));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("endpoint JSON");
    v["generation_in_force"]
        .as_u64()
        .unwrap_or_else(|| panic!("{pod} not in force: {v}"))
}

#[test]
fn agent_kill_9_keeps_connections_and_denied_ports_stay_closed_until_it_converges() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("palisade-kill9-{}", std::process::id()));
    let cluster = write(
        &dir,
        "cluster.yaml",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n".to_string(),
            pod_yaml("server", "server", "10.244.7.10", &[(80, "TCP")]),
            pod_yaml("client", "client", "10.244.7.11", &[]),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: server-7000s\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: server\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: client\n    ports:\n    - port: 7000\n      endPort: 7100\n".to_string(),
        ]
        .join("---\n"),
    );
    let lab = LabGuard::up(&[cluster]);
    let server_ns = netns_of(&lab, "default/server");
    let client_ns = netns_of(&lab, "default/client");
    let echo: SocketAddr = "10.244.7.10:7001".parse().unwrap();
    let denied: SocketAddr = "10.244.7.10:80".parse().unwrap();
    let listener = server_ns
        .run_in(move || TcpListener::bind(echo).unwrap())
        .unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut conn = client_ns
        .run_in(move || {
            TcpStream::connect_timeout(&echo, Duration::from_secs(2)).expect("allowed connection")
        })
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let ping = |conn: &mut TcpStream, what: &str| {
        conn.write_all(what.as_bytes()).unwrap();
        let mut buf = vec![0u8; what.len()];
        conn.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("long-lived connection broke ({what}): {e}"));
        assert_eq!(buf, what.as_bytes());
    };
    ping(&mut conn, "before");
    assert!(
        !tcp_connects(&client_ns, denied, Duration::from_millis(300)),
        "port 80 must be denied before the kill"
    );

    let generation_before = generation_in_force(&lab, "default/server");
    let pid = lab.state()["agent"]["pid"].as_i64().expect("agent pid") as i32;
    // SAFETY: kill(2) on the agent this test's lab started; the PID is alive (checked by the lab state's start time).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let gone = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/status")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| !s.contains("State:\tZ"))
            .unwrap_or(false)
    {
        assert!(gone.elapsed() < Duration::from_secs(5), "agent did not die");
        std::thread::yield_now();
    }
    // Without the agent: the connection lives, new allowed connections work, and a
    // prober hammering the denied port never gets through.
    ping(&mut conn, "agent-dead");
    let mut attempts = 0;
    for _ in 0..20 {
        assert!(
            !tcp_connects(&client_ns, denied, Duration::from_millis(100)),
            "a denied connection got through while the agent was down"
        );
        attempts += 1;
    }
    assert_eq!(attempts, 20);
    assert!(
        tcp_connects(&client_ns, echo, Duration::from_secs(2)),
        "allowed new connection while the agent was down"
    );

    run(&mut lab.cmd(&["start-agent"]));
    let generation_after = generation_in_force(&lab, "default/server");
    assert!(
        generation_after > generation_before,
        "the generation in force must keep growing across restarts ({generation_before} -> {generation_after})"
    );
    ping(&mut conn, "after-restart");
    for pod in ["default/server", "default/client"] {
        let out = palisade()
            .args(["endpoint", "diff", pod, "--socket"])
            .arg(lab.socket())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{pod} not converged: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(
        !tcp_connects(&client_ns, denied, Duration::from_millis(300)),
        "port 80 must stay denied after the restart"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_new_pod_selected_by_a_policy_never_sends_a_packet_to_a_denied_peer() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("palisade-newpod-{}", std::process::id()));
    let cluster = write(
        &dir,
        "cluster.yaml",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n".to_string(),
            pod_yaml("target", "target", "10.244.8.10", &[(80, "TCP")]),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: fresh-no-egress\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: fresh\n  policyTypes: [Egress]\n".to_string(),
        ]
        .join("---\n"),
    );
    let lab = LabGuard::up(&[cluster]);
    let target_ns = netns_of(&lab, "default/target");
    let sink: SocketAddr = "10.244.8.10:9999".parse().unwrap();
    let udp = target_ns
        .run_in(move || UdpSocket::bind(sink).unwrap())
        .unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let count = |udp: &UdpSocket, from: &str| {
        let mut n = 0;
        let mut buf = [0u8; 64];
        while let Ok((len, peer)) = udp.recv_from(&mut buf) {
            if peer.ip().to_string() == from && len > 0 {
                n += 1;
            }
        }
        n
    };
    let burst = |ns: &palisade_lab::netns::NetNs| {
        ns.run_in(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..200 {
                let _ = s.send_to(b"x", sink);
            }
        })
        .unwrap()
    };
    // A control pod not selected by the policy proves the sink hears packets.
    lab.apply(&write(
        &dir,
        "control.yaml",
        &pod_yaml("control", "control", "10.244.8.11", &[]),
    ));
    burst(&netns_of(&lab, "default/control"));
    assert!(
        count(&udp, "10.244.8.11") > 0,
        "the sink must hear an unselected pod"
    );
    // The selected pod: its very first packets, right when its sandbox is ready.
    lab.apply(&write(
        &dir,
        "fresh.yaml",
        &pod_yaml("fresh", "fresh", "10.244.8.12", &[]),
    ));
    let fresh = netns_of(&lab, "default/fresh");
    burst(&fresh);
    assert!(!tcp_connects(
        &fresh,
        "10.244.8.10:80".parse().unwrap(),
        Duration::from_millis(300)
    ));
    assert_eq!(
        count(&udp, "10.244.8.12"),
        0,
        "a packet from the new pod reached a denied peer"
    );
    std::fs::remove_dir_all(&dir).ok();
}
