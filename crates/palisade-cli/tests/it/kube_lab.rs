//! `palisade lab up --kubernetes` against the real binaries: the upstream control
//! plane in a network namespace of its own, outliving the CLI; per node namespace
//! the agent (as its ServiceAccount) and upstream kube-proxy; the root namespace
//! reaches the API server only through the loopback forwarder; `lab down` leaves
//! no process, namespace, pin or state behind.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_kube_lab::Binaries;
use palisade_lab::netns::NetNs;
use palisade_lab::process::ProcessRecord;
use palisade_testkit::{decide, Context, Decision};

use crate::support::{cni_dir, palisade, privileged, run};

/// Whether a Kubernetes lab test runs: the lab's needs plus the upstream binaries.
pub(crate) fn kube_privileged() -> Option<Binaries> {
    if !privileged() {
        return None;
    }
    let missing: Vec<String> = Binaries::locate()
        .err()
        .map(|e| e.to_string())
        .into_iter()
        .collect();
    match decide("kubernetes lab", &missing, Context::current()) {
        Decision::Run => Some(Binaries::locate().expect("located")),
        Decision::Skip(msg) => {
            eprintln!("{msg}");
            None
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

/// A Kubernetes lab, brought down when dropped (also during a panic).
pub struct KubeLabGuard {
    pub name: String,
}

impl KubeLabGuard {
    pub fn up(nodes: usize) -> KubeLabGuard {
        Self::up_with_agent_args(nodes, "")
    }

    /// [`KubeLabGuard::up`] whose agents also get `agent_args`
    /// (`PALISADE_LAB_AGENT_ARGS`, set on this command only).
    pub fn up_with_agent_args(nodes: usize, agent_args: &str) -> KubeLabGuard {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("k{}x{n}", std::process::id() % 100_000);
        let guard = KubeLabGuard { name };
        let cni = cni_dir().display().to_string();
        let nodes = nodes.to_string();
        let mut up = guard.cmd(&["up", "--kubernetes", "--nodes", &nodes, "--cni-bin", &cni]);
        if !agent_args.is_empty() {
            up.env("PALISADE_LAB_AGENT_ARGS", agent_args);
        }
        run(&mut up);
        guard
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = palisade();
        c.arg("lab").args(args).args(["--name", &self.name]);
        c
    }

    pub fn state(&self) -> serde_json::Value {
        let p = self.dir().join("kube-lab.json");
        serde_json::from_slice(&std::fs::read(p).expect("kube lab state")).expect("JSON")
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from("/run/palisade-lab").join(&self.name)
    }

    /// `lab kubeconfig`, written to a file of the test.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let out = run(&mut self.cmd(&["kubeconfig"]));
        let path = dir.join("kubeconfig");
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

impl Drop for KubeLabGuard {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).output();
    }
}

pub fn kubectl(bins: &Binaries, kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(bins.path("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every process the lab recorded, control plane included.
fn recorded_processes(lab: &KubeLabGuard) -> Vec<ProcessRecord> {
    let s = lab.state();
    let cp_dir = s["control_plane_dir"].as_str().unwrap();
    let cp: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(cp_dir).join("control-plane.json")).unwrap(),
    )
    .unwrap();
    let mut procs = vec![
        cp["etcd"].clone(),
        cp["apiserver"].clone(),
        s["forwarder"][0].clone(),
        s["controller"].clone(),
    ];
    procs.extend(cp["controllers"].as_array().unwrap().iter().cloned());
    for n in s["nodes"].as_array().unwrap() {
        procs.push(n["agent"].clone());
        procs.push(n["kube_proxy"].clone());
    }
    procs
        .into_iter()
        .map(|p| serde_json::from_value(p).expect("a process record"))
        .collect()
}

#[test]
fn kubernetes_lab_runs_the_real_control_plane_in_its_own_netns_and_down_removes_everything() {
    let Some(bins) = kube_privileged() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let lab = KubeLabGuard::up(2);
    eprintln!(
        "lab up --kubernetes --nodes 2: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The CLI has exited: every recorded process still runs, detached.
    let procs = recorded_processes(&lab);
    let roles: Vec<&str> = procs.iter().map(|p| p.role.as_str()).collect();
    for want in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "forwarder",
        "controller",
        "agent n1",
        "agent n2",
        "kube-proxy n1",
        "kube-proxy n2",
    ] {
        assert!(roles.contains(&want), "{want} recorded: {roles:?}");
    }
    for p in &procs {
        assert!(
            p.is_alive(),
            "{} (pid {}) runs after lab up returned",
            p.role,
            p.pid
        );
    }

    // From the root namespace, the API server is reachable through the forwarder only.
    let kc = lab.kubeconfig(tmp.path());
    assert_eq!(
        kubectl(&bins, &kc, &["get", "--raw", "/readyz"]).trim(),
        "ok"
    );
    // The endpoint reconciler is on: `kubernetes` points at the API netns address.
    let eps = kubectl(
        &bins,
        &kc,
        &[
            "get",
            "endpointslice",
            "-n",
            "default",
            "-l",
            "kubernetes.io/service-name=kubernetes",
            "-o",
            "json",
        ],
    );
    let eps: serde_json::Value = serde_json::from_str(&eps).unwrap();
    assert_eq!(
        eps["items"][0]["endpoints"][0]["addresses"][0], "10.240.0.2",
        "{eps}"
    );

    // Each node reaches the API server at the `kubernetes` Service's ClusterIP through
    // real kube-proxy's rules in its own namespace (the agent authenticates that way).
    let state = lab.state();
    for n in state["nodes"].as_array().unwrap() {
        let ns = NetNs::open(n["net"]["netns"].as_str().unwrap());
        let svc: SocketAddr = "10.96.0.1:443".parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let connected = loop {
            let ok = ns
                .run_in(|| TcpStream::connect_timeout(&svc, Duration::from_secs(2)).is_ok())
                .unwrap();
            if ok || Instant::now() > deadline {
                break ok;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            connected,
            "{} connects to the kubernetes Service",
            ns.name()
        );
        let nat = Command::new("ip")
            .args(["netns", "exec", ns.name(), "iptables-save", "-t", "nat"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&nat.stdout).contains("default/kubernetes:https cluster IP")
        );
    }
    // The root namespace got neither kube-proxy's rules nor a lab address.
    let nat = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.contains("KUBE-SERVICES"),
        "root netns untouched: {nat}"
    );
    let addrs = Command::new("ip").args(["-o", "addr"]).output().unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(
        !addrs.contains("10.240.") && !addrs.contains("10.244."),
        "{addrs}"
    );

    // The agent's identity is the chart's ServiceAccount with the chart's RBAC.
    let agent = "--as=system:serviceaccount:palisade-system:palisade-agent";
    for (verb, resource, allowed) in [
        ("watch", "pods", true),
        ("list", "networkpolicies.networking.k8s.io", true),
        ("list", "endpointslices.discovery.k8s.io", true),
        ("create", "nodepolicystatuses.palisade.io", true),
        ("create", "networkpolicies.networking.k8s.io", false),
        ("list", "secrets", false),
        ("update", "pods", false),
    ] {
        let out = Command::new(bins.path("kubectl"))
            .arg(format!("--kubeconfig={}", kc.display()))
            .args(["auth", "can-i", verb, resource, agent])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim() == "yes",
            allowed,
            "agent may {verb} {resource}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // lab down: nothing left.
    let pins: Vec<PathBuf> = state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| PathBuf::from(n["pin_root"].as_str().unwrap()))
        .collect();
    let netns: Vec<String> = ["api", "net", "imds", "n1", "n2"]
        .iter()
        .map(|s| format!("{}-{s}", lab.name))
        .collect();
    for n in &netns {
        assert!(NetNs::open(n).exists(), "{n} exists while up");
    }
    run(&mut lab.cmd(&["down"]));
    for p in &procs {
        assert!(
            !p.is_alive(),
            "{} (pid {}) stopped by lab down",
            p.role,
            p.pid
        );
    }
    for n in &netns {
        assert!(!NetNs::open(n).exists(), "{n} removed");
    }
    for p in &pins {
        assert!(!p.exists(), "{} removed", p.display());
    }
    assert!(!lab.dir().exists(), "state removed");
}

impl KubeLabGuard {
    /// `lab apply -f FILE` (returns once in force and every pod is Ready).
    pub fn apply(&self, file: &Path) {
        let f = file.display().to_string();
        run(&mut self.cmd(&["apply", "-f", &f]));
    }

    /// `lab probe --compare --output json` is not a thing; the table's last line says
    /// whether every pair agrees, the JSON gives the verdicts.
    pub fn probe_compare(&self, protocol: &str, port: u16) -> (serde_json::Value, String) {
        let port = port.to_string();
        let json = run(&mut self.cmd(&[
            "probe",
            "--output",
            "json",
            "--protocol",
            protocol,
            "--port",
            &port,
        ]));
        let table = run(&mut self.cmd(&[
            "probe",
            "--compare",
            "--protocol",
            protocol,
            "--port",
            &port,
        ]));
        (
            serde_json::from_slice(&json.stdout).expect("probe JSON"),
            String::from_utf8_lossy(&table.stdout).into_owned(),
        )
    }

    /// The log of pod `ns/name`'s servers (arrival lines), from its kubelet's records.
    pub fn pod_log(&self, key: &str) -> PathBuf {
        for node in self.state()["nodes"].as_array().unwrap() {
            let dir = PathBuf::from(node["dir"].as_str().unwrap()).join("kubelet");
            let Ok(state) = palisade_kubelet::records::StateDir::open(&dir) else {
                continue;
            };
            for rec in state.load_all().unwrap().into_iter().flatten() {
                if rec.key() == key {
                    return state.pod_log(&rec);
                }
            }
        }
        panic!("no kubelet runs pod {key}");
    }
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `within`.
pub(crate) fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `namespace/name` -> node of every pod.
pub(crate) fn pod_nodes(bins: &Binaries, kc: &Path) -> std::collections::BTreeMap<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(&kubectl(bins, kc, &["get", "pods", "-A", "-o", "json"])).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                format!(
                    "{}/{}",
                    p["metadata"]["namespace"].as_str().unwrap(),
                    p["metadata"]["name"].as_str().unwrap()
                ),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn aws_walkthrough_through_the_api_server_on_two_nodes_agrees_with_the_simulator_on_every_pair() {
    let Some(bins) = kube_privileged() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let lab = KubeLabGuard::up(2);
    let kc = lab.kubeconfig(tmp.path());
    let dir = crate::support::repo().join("examples/aws-walkthrough");
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    steps.sort();
    lab.apply(&steps[0]);
    // The scheduler spread the pods: some pairs cross nodes.
    let nodes = pod_nodes(&bins, &kc);
    let used: std::collections::BTreeSet<&String> = nodes.values().collect();
    assert_eq!(used.len(), 2, "pods on both nodes: {nodes:?}");
    let mut seen = std::collections::BTreeSet::new();
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            lab.apply(step);
        }
        for (proto, port) in [("TCP", 80), ("UDP", 53)] {
            let (measured, table) = lab.probe_compare(proto, port);
            assert!(
                table.contains("measured and simulated verdicts agree on all 20 pairs"),
                "{}: {proto}/{port}:\n{table}",
                step.display()
            );
            let verdicts = crate::support::verdicts(&measured);
            let cross = verdicts
                .iter()
                .filter(|(f, t, _)| nodes.get(f) != nodes.get(t))
                .count();
            assert!(cross > 0, "cross-node pairs probed");
            seen.insert(verdicts);
        }
    }
    // The steps changed what was measured (not the same matrix every time).
    assert!(seen.len() >= 4, "{} distinct matrices", seen.len());
    // lab delete of the last step: what was measured after the step before it.
    let before_last = {
        let f = steps[steps.len() - 1].display().to_string();
        run(&mut lab.cmd(&["delete", "-f", &f]));
        lab.probe_compare("TCP", 80)
    };
    assert!(
        before_last.1.contains("agree on all 20 pairs"),
        "{}",
        before_last.1
    );
    assert!(
        seen.contains(&crate::support::verdicts(&before_last.0)),
        "after the delete, a matrix measured before"
    );
    eprintln!(
        "walkthrough on 2 nodes: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A namespace with a denied `target` and an allowed `ok` receiver (UDP 7000, static
/// addresses), and an egress policy: pods `role=sender` may send to `ok` only; a
/// `control` pod outside the policy sends to `target`, proving it receives.
fn receivers_and_egress_policy(ns: &str, target_ip: &str, ok_ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: target, namespace: {ns}, labels: {{app: target}}}}
spec:
  containers: [{{name: c, image: lab, ports: [{{containerPort: 7000, protocol: UDP}}]}}]
status: {{podIP: {target_ip}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: ok, namespace: {ns}, labels: {{app: ok}}}}
spec:
  containers: [{{name: c, image: lab, ports: [{{containerPort: 7000, protocol: UDP}}]}}]
status: {{podIP: {ok_ip}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: control
  namespace: {ns}
  labels: {{app: control}}
  annotations: {{lab.palisade.io/send: "udp://{target_ip}:7000?every=20ms"}}
spec:
  containers: [{{name: c, image: lab}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: senders-to-ok-only, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{role: sender}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{podSelector: {{matchLabels: {{app: ok}}}}}}]
"#
    )
}

/// The sender annotation: UDP datagrams every 5 ms to both receivers.
fn send_to(target_ip: &str, ok_ip: &str) -> String {
    format!("udp://{target_ip}:7000?every=5ms,udp://{ok_ip}:7000?every=5ms")
}

/// Distinct sender identities (with a prefix) that reached a receiver, and how many
/// datagrams they sent.
fn arrivals_from(log: &Path, prefix: &str) -> (std::collections::BTreeSet<String>, usize) {
    let a: Vec<_> = palisade_lab::sender::arrivals(log)
        .into_iter()
        .filter(|a| a.identity.starts_with(prefix))
        .collect();
    (a.iter().map(|a| a.identity.clone()).collect(), a.len())
}

fn ready_replicas(bins: &Binaries, kc: &Path, ns: &str, app: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(&kubectl(
        bins,
        kc,
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            &format!("app={app}"),
            "-o",
            "json",
        ],
    ))
    .unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count()
}

#[test]
fn deployment_scaled_1_to_10_under_an_egress_policy_sends_nothing_to_the_denied_peer() {
    let Some(bins) = kube_privileged() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let lab = KubeLabGuard::up(2);
    let kc = lab.kubeconfig(tmp.path());
    let (target, ok) = ("10.244.0.50", "10.244.0.51");
    let base = crate::lab::write(
        tmp.path(),
        "base.yaml",
        &receivers_and_egress_policy("scale", target, ok),
    );
    lab.apply(&base);
    // Each replica's sender starts the instant its CNI ADD returns (the kubelet's
    // `lab.palisade.io/send`), not after any wait of the lab.
    let deployment = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: sender, namespace: scale}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: sender}}}}
  template:
    metadata:
      labels: {{app: sender, role: sender}}
      annotations: {{lab.palisade.io/send: "{}"}}
    spec:
      containers: [{{name: c, image: lab}}]
"#,
        send_to(target, ok)
    );
    let deployment = crate::lab::write(tmp.path(), "deployment.yaml", &deployment);
    lab.apply(&deployment);
    kubectl(
        &bins,
        &kc,
        &["scale", "-n", "scale", "deployment/sender", "--replicas=10"],
    );
    eventually(Duration::from_secs(180), "10 Ready replicas", || {
        (ready_replicas(&bins, &kc, "scale", "sender") == 10).then_some(())
    });
    let ok_log = lab.pod_log("scale/ok");
    // Every replica's sender runs and its allowed datagrams arrive...
    let senders = eventually(
        Duration::from_secs(60),
        "arrivals at ok from all 10 replicas",
        || {
            let (ids, _) = arrivals_from(&ok_log, "scale/sender-");
            (ids.len() == 10).then_some(ids)
        },
    );
    // ...and across nodes: the replicas run on both.
    let nodes = pod_nodes(&bins, &kc);
    let sender_nodes: std::collections::BTreeSet<&String> =
        senders.iter().filter_map(|s| nodes.get(s)).collect();
    assert_eq!(sender_nodes.len(), 2, "replicas on both nodes: {nodes:?}");
    // The denied peer receives (from the control pod)...
    let target_log = lab.pod_log("scale/target");
    eventually(
        Duration::from_secs(30),
        "the control pod's datagrams at target",
        || (arrivals_from(&target_log, "scale/control").1 > 0).then_some(()),
    );
    // ...but not one datagram of any replica reached it, from its first.
    let (ids, n) = arrivals_from(&target_log, "scale/sender-");
    assert_eq!(n, 0, "datagrams from {ids:?} reached the denied peer");
    eprintln!(
        "scale 1 -> 10 under an egress policy: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn api_server_killed_for_60s_denied_stays_denied_and_policies_after_the_restart_are_enforced() {
    let Some(bins) = kube_privileged() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let lab = KubeLabGuard::up(2);
    let kc = lab.kubeconfig(tmp.path());
    let (target, ok) = ("10.244.0.60", "10.244.0.61");
    let base = crate::lab::write(
        tmp.path(),
        "base.yaml",
        &receivers_and_egress_policy("outage", target, ok),
    );
    lab.apply(&base);
    let victim = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: victim
  namespace: outage
  labels: {{app: victim, role: sender}}
  annotations: {{lab.palisade.io/send: "{}"}}
spec:
  containers: [{{name: c, image: lab}}]
"#,
        send_to(target, ok)
    );
    lab.apply(&crate::lab::write(tmp.path(), "victim.yaml", &victim));
    let (ok_log, target_log) = (lab.pod_log("outage/ok"), lab.pod_log("outage/target"));
    eventually(
        Duration::from_secs(30),
        "the victim's datagrams at ok",
        || (arrivals_from(&ok_log, "outage/victim").1 > 0).then_some(()),
    );

    // SIGKILL the API server by its recorded PID (the record's start time guards
    // against a recycled PID), and keep it down for 60 s.
    let cp_dir = PathBuf::from(lab.state()["control_plane_dir"].as_str().unwrap());
    let mut cp = palisade_kube_lab::persistent::PersistentControlPlane::load(&cp_dir).unwrap();
    assert!(cp.apiserver.is_alive());
    // SAFETY: kill(2) of the recorded, alive API server process.
    assert_eq!(unsafe { libc::kill(cp.apiserver.pid, libc::SIGKILL) }, 0);
    eventually(Duration::from_secs(10), "the API server to die", || {
        (!cp.apiserver.is_alive()).then_some(())
    });
    let down_since = Instant::now();
    let before = arrivals_from(&ok_log, "outage/victim").1;
    while down_since.elapsed() < Duration::from_secs(60) {
        let (_, denied) = arrivals_from(&target_log, "outage/victim");
        assert_eq!(
            denied, 0,
            "a datagram passed to the denied peer while the API server was away"
        );
        assert!(!cp.apiserver.is_alive());
        std::thread::sleep(Duration::from_millis(500));
    }
    // The datapath kept working for what is allowed all along.
    assert!(
        arrivals_from(&ok_log, "outage/victim").1 > before,
        "allowed traffic flowed during the outage"
    );
    cp.restart_apiserver().expect("the API server restarts");
    assert_eq!(
        kubectl(&bins, &kc, &["get", "--raw", "/readyz"]).trim(),
        "ok"
    );

    // A policy applied after the restart is enforced: ok now admits nothing.
    let close = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok-admits-nothing, namespace: outage}
spec:
  podSelector: {matchLabels: {app: ok}}
  policyTypes: [Ingress]
"#;
    lab.apply(&crate::lab::write(tmp.path(), "close.yaml", close));
    let (measured, table) = lab.probe_compare("UDP", 7000);
    assert!(
        table.contains("measured and simulated verdicts agree on all"),
        "{table}"
    );
    assert_eq!(
        crate::support::verdict(&measured, "outage/victim", "outage/ok"),
        "deny"
    );
    assert_eq!(
        crate::support::verdict(&measured, "outage/victim", "outage/target"),
        "deny"
    );
    assert_eq!(arrivals_from(&target_log, "outage/victim").1, 0);
    eprintln!(
        "API server outage test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Pods on both nodes, and two policies: `web` selects pods on both nodes, `db`
/// pods on n1 only. web-1 declares the readiness gate.
const STATUS_OBJECTS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: status, labels: {app: web}}
spec:
  nodeName: n1
  readinessGates: [{conditionType: palisade.io/policy-enforced}]
  containers: [{name: c, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: status, labels: {app: web}}
spec:
  nodeName: n2
  containers: [{name: c, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: status, labels: {app: db}}
spec:
  nodeName: n1
  containers: [{name: c, image: lab, ports: [{containerPort: 5432}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: status}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: status}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#;

#[test]
fn lab_controller_runs_as_the_charts_service_account_and_status_says_in_force_on_every_node_with_selected_pods(
) {
    let Some(bins) = kube_privileged() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let lab = KubeLabGuard::up(2);
    let kc = lab.kubeconfig(tmp.path());
    // The controller is a recorded process of the lab, and the Lease's holder.
    let rec: ProcessRecord =
        serde_json::from_value(lab.state()["controller"].clone()).expect("controller recorded");
    assert!(rec.is_alive(), "the controller runs after lab up returned");
    let holder = kubectl(
        &bins,
        &kc,
        &[
            "get",
            "lease",
            "-n",
            "palisade-system",
            "palisade-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert_eq!(holder.trim(), "palisade-controller-lab-0");
    // Its identity is the chart's ServiceAccount with the chart's RBAC: it may do what
    // it needs, not more.
    let controller = "--as=system:serviceaccount:palisade-system:palisade-controller";
    for (verb, resource, allowed) in [
        ("watch", "nodepolicystatuses.palisade.io", true),
        ("patch", "networkpolicystatuses.palisade.io", true),
        ("patch", "pods --subresource=status", true),
        ("create", "nodepolicystatuses.palisade.io", false),
        ("list", "secrets", false),
        ("update", "pods", false),
    ] {
        let out = Command::new(bins.path("kubectl"))
            .arg(format!("--kubeconfig={}", kc.display()))
            .args(["auth", "can-i", verb])
            .args(resource.split(' '))
            .arg(controller)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim() == "yes",
            allowed,
            "controller may {verb} {resource}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    lab.apply(&crate::lab::write(
        tmp.path(),
        "status.yaml",
        STATUS_OBJECTS,
    ));
    let rv = |name: &str| {
        kubectl(
            &bins,
            &kc,
            &[
                "get",
                "networkpolicy",
                "-n",
                "status",
                name,
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
        )
        .trim()
        .to_string()
    };
    let (web_rv, db_rv) = (rv("web"), rv("db"));
    let kcs = kc.display().to_string();
    // `palisade status` (as the lab user, through the forwarder): web on both nodes,
    // db on the one node with a db pod, each as of its current resourceVersion.
    let report = eventually(Duration::from_secs(60), "status: both in force", || {
        let out = palisade()
            .args(["status", "--kubeconfig", &kcs, "-n", "status", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "palisade status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let line = |p: &str| {
            v["policies"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["policy"] == p)
                .cloned()
                .unwrap_or_default()
        };
        let (web, db) = (
            line("NetworkPolicy status/web"),
            line("NetworkPolicy status/db"),
        );
        let done = web["reason"] == "InForce"
            && web["resource_version"] == web_rv.as_str()
            && db["reason"] == "InForce"
            && db["resource_version"] == db_rv.as_str();
        done.then_some((web, db, v.clone()))
    });
    let (web, db, all) = report;
    assert_eq!(web["in_force"], "2/2", "web pods on n1 and n2: {all}");
    assert_eq!(db["in_force"], "1/1", "a db pod on n1 only: {all}");
    // Every node reports.
    let nodes: Vec<&str> = all["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["n1", "n2"], "{all}");
    // The table says the same.
    let table = run(palisade().args(["status", "--kubeconfig", &kcs, "-n", "status"]));
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("NetworkPolicy status/web") && l.contains("2/2")),
        "{table}"
    );
    // The pod that asked for it has its condition.
    eventually(
        Duration::from_secs(30),
        "web-1's palisade.io/policy-enforced condition",
        || {
            let p: serde_json::Value = serde_json::from_str(&kubectl(
                &bins,
                &kc,
                &["get", "pod", "-n", "status", "web-1", "-o", "json"],
            ))
            .unwrap();
            p["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "palisade.io/policy-enforced" && c["status"] == "True")
                .then_some(())
        },
    );
}

#[test]
fn agents_replaced_under_traffic_for_3_rounds_keep_every_connection_and_let_no_denied_datagram_through(
) {
    let Some(_bins) = kube_privileged() else {
        return;
    };
    let started = Instant::now();
    let lab = KubeLabGuard::up(2);
    let out = lab
        .cmd(&["upgrade", "--rounds", "3", "--output", "json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lab upgrade printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && report["failures"].as_array().unwrap().is_empty(),
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every node restarted in every round, and each restart replaced the programs on
    // every pod interface of its node (ids the kernel had not run there before).
    let restarts = report["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 6, "3 rounds x 2 nodes: {report:#}");
    let mut seen = std::collections::BTreeSet::new();
    for r in restarts {
        let r = &r[1];
        let before: Vec<u64> = serde_json::from_value(r["programs_before"].clone()).unwrap();
        let after: Vec<u64> = serde_json::from_value(r["programs_after"].clone()).unwrap();
        assert_eq!(after.len(), 2, "from_pod and to_pod: {r}");
        assert!(before.iter().all(|id| !after.contains(id)), "{r}");
        assert!(after.iter().all(|id| seen.insert(*id)), "a fresh id: {r}");
        let want = if r["node"] == "n1" { 5 } else { 3 };
        assert_eq!(r["interfaces"], want, "every pod of the node checked: {r}");
    }
    // The long-lived connections, same node and across nodes, survived with data.
    let conns = report["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 4);
    for same in [true, false] {
        assert!(conns.iter().any(|c| c["same_node"] == same), "{report:#}");
    }
    for c in conns {
        assert!(c["error"].is_null(), "{c}");
        assert!(c["echoes"].as_u64().unwrap() > 100, "{c}");
    }
    // No denied datagram arrived, of thousands sent; the allowed ones all did.
    for f in report["flows"].as_array().unwrap() {
        let (sent, received) = (f["sent"].as_u64().unwrap(), f["received"].as_u64().unwrap());
        if f["allowed"] == true {
            assert!(received > 0 && received <= sent, "{f}");
        } else {
            assert!(sent > 1000, "{f}");
            assert_eq!(received, 0, "{f}");
        }
    }
    eprintln!(
        "upgrade under traffic, 3 rounds: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Three pods on two nodes; `b` admits only `c`, `a` admits nobody.
const UNINSTALL_OBJECTS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: a, namespace: gone, labels: {app: a}}
spec:
  nodeName: n1
  containers: [{name: c, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: gone, labels: {app: b}}
spec:
  nodeName: n2
  containers: [{name: c, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: gone, labels: {app: c}}
spec:
  nodeName: n1
  containers: [{name: c, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-c, namespace: gone}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: c}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-admits-nobody, namespace: gone}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress]
"#;

/// The pod records of every node's lab kubelet.
pub(crate) fn records(lab: &KubeLabGuard) -> Vec<palisade_kubelet::records::PodRecord> {
    let mut out = Vec::new();
    for node in lab.state()["nodes"].as_array().unwrap() {
        let dir = PathBuf::from(node["dir"].as_str().unwrap()).join("kubelet");
        if let Ok(state) = palisade_kubelet::records::StateDir::open(&dir) {
            out.extend(state.load_all().unwrap().into_iter().flatten());
        }
    }
    out
}

/// The plugin types pod `key`'s sandbox was created with.
fn chain_of(lab: &KubeLabGuard, key: &str) -> Vec<String> {
    let rec = records(lab)
        .into_iter()
        .find(|r| r.key() == key)
        .unwrap_or_else(|| panic!("no kubelet runs {key}"));
    rec.network
        .expect("ADD ran")
        .plugins
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

/// `lab probe` of TCP/80 as JSON (measured only: after an uninstall the simulator,
/// which reads the policies from the API server, is not what the kernel does).
fn probe_tcp80(lab: &KubeLabGuard) -> Vec<(String, String, String)> {
    let out = run(&mut lab.cmd(&[
        "probe",
        "--output",
        "json",
        "--protocol",
        "TCP",
        "--port",
        "80",
    ]));
    crate::support::verdicts(&serde_json::from_slice(&out.stdout).expect("probe JSON"))
}

/// The ids of the TCX programs on interface `ifname` in netns `ns`, both directions,
/// and what `tc filter show` lists on it (the clsact fallback).
fn programs_on(ns: &str, ifname: &str) -> (Vec<u32>, String) {
    use aya::programs::{tc::TcAttachType, SchedClassifier};
    let ifname_owned = ifname.to_string();
    let ids = NetNs::open(ns)
        .run_in(move || {
            let mut ids = Vec::new();
            for at in [TcAttachType::Ingress, TcAttachType::Egress] {
                let (_, progs) = SchedClassifier::query_tcx(&ifname_owned, at)
                    .unwrap_or_else(|e| panic!("TCX query of {ifname_owned}: {e}"));
                ids.extend(progs.iter().map(|p| p.id()));
            }
            ids
        })
        .unwrap();
    let mut filters = String::new();
    for dir in ["ingress", "egress"] {
        let out = Command::new("ip")
            .args([
                "netns", "exec", ns, "tc", "filter", "show", "dev", ifname, dir,
            ])
            .output()
            .unwrap();
        filters.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    (ids, filters)
}

#[test]
fn uninstall_removes_the_chaining_entry_pins_programs_and_status_objects_and_every_pair_connects() {
    let Some(bins) = kube_privileged() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let lab = KubeLabGuard::up(2);
    let kc = lab.kubeconfig(tmp.path());
    lab.apply(&crate::lab::write(
        tmp.path(),
        "gone.yaml",
        UNINSTALL_OBJECTS,
    ));
    let before = probe_tcp80(&lab);
    let verdict = |v: &[(String, String, String)], f: &str, t: &str| {
        v.iter()
            .find(|(a, b, _)| a == f && b == t)
            .map(|x| x.2.clone())
            .unwrap_or_else(|| panic!("no pair {f} -> {t}: {v:?}"))
    };
    assert_eq!(verdict(&before, "gone/a", "gone/b"), "deny", "{before:?}");
    assert_eq!(verdict(&before, "gone/c", "gone/a"), "deny", "{before:?}");
    assert_eq!(verdict(&before, "gone/c", "gone/b"), "allow", "{before:?}");

    // What Palisade put there: the status objects, the programs on every pod
    // interface, the pins, the chaining entry.
    let count = |what: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&kubectl(&bins, &kc, &["get", what, "-A", "-o", "json"])).unwrap();
        v["items"].as_array().unwrap().len()
    };
    assert_eq!(count("nodepolicystatuses.palisade.io"), 2);
    eventually(
        Duration::from_secs(30),
        "the controller's NetworkPolicyStatus objects",
        || (count("networkpolicystatuses.palisade.io") >= 2).then_some(()),
    );
    let state = lab.state();
    let mut interfaces = Vec::new();
    for n in state["nodes"].as_array().unwrap() {
        let socket = PathBuf::from(n["socket"].as_str().unwrap());
        let netns = n["net"]["netns"].as_str().unwrap().to_string();
        let status = palisade_agent::api::client::call(
            &socket,
            &palisade_agent::api::Status,
            Duration::from_secs(5),
        )
        .unwrap();
        for (pod, ep) in &status.data.endpoints {
            let (ids, _) = programs_on(&netns, &ep.interface);
            assert_eq!(ids.len(), 2, "{pod}: from_pod and to_pod attached");
            interfaces.push((netns.clone(), ep.interface.clone(), pod.clone()));
        }
        assert!(!status.data.endpoints.is_empty(), "{}", socket.display());
        let dir = PathBuf::from(n["dir"].as_str().unwrap());
        let conflist = std::fs::read_to_string(dir.join("net.d/10-lab-pods.conflist")).unwrap();
        assert!(conflist.contains("palisade-cni"), "chained: {conflist}");
        assert!(PathBuf::from(n["pin_root"].as_str().unwrap()).exists());
    }
    assert_eq!(interfaces.len(), 3, "{interfaces:?}");
    let procs: Vec<ProcessRecord> = std::iter::once(state["controller"].clone())
        .chain(
            state["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["agent"].clone()),
        )
        .map(|p| serde_json::from_value(p).unwrap())
        .collect();

    run(&mut lab.cmd(&["uninstall"]));

    // No Palisade process, program, pin, chaining entry, plugin or status object left.
    for p in &procs {
        assert!(!p.is_alive(), "{} stopped", p.role);
    }
    for (ns, ifname, pod) in &interfaces {
        let (ids, filters) = programs_on(ns, ifname);
        assert!(
            ids.is_empty(),
            "{pod}: TCX programs left on {ifname}: {ids:?}"
        );
        assert!(
            filters.trim().is_empty(),
            "{pod}: tc filters on {ifname}: {filters}"
        );
    }
    for n in state["nodes"].as_array().unwrap() {
        let pins = PathBuf::from(n["pin_root"].as_str().unwrap());
        assert!(!pins.exists(), "{} removed", pins.display());
        let dir = PathBuf::from(n["dir"].as_str().unwrap());
        assert_eq!(
            std::fs::read(dir.join("net.d/10-lab-pods.conflist")).unwrap(),
            std::fs::read(dir.join("10-lab-pods.conflist.before-palisade")).unwrap(),
            "the node's configuration list restored byte for byte"
        );
        // The binary stays: the pods created while it was chained are deleted with the
        // configuration they were created with, which runs its DEL (below).
        assert!(dir.join("cni-bin/palisade-cni").exists());
    }
    let resources = kubectl(&bins, &kc, &["api-resources", "-o", "name"]);
    assert!(
        !resources.contains("palisade.io"),
        "Palisade's kinds are gone: {resources}"
    );
    // A pod created while Palisade was chained is deleted cleanly (its DEL runs
    // palisade-cni, which completes without an agent); a new pod runs the node's chain
    // without Palisade.
    assert!(chain_of(&lab, "gone/c").contains(&"palisade-cni".to_string()));
    kubectl(
        &bins,
        &kc,
        &[
            "delete",
            "pod",
            "-n",
            "gone",
            "c",
            "--wait=true",
            "--timeout=60s",
        ],
    );
    eventually(Duration::from_secs(30), "gone/c's sandbox removed", || {
        (!records(&lab).iter().any(|r| r.key() == "gone/c")).then_some(())
    });
    let d = "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: gone, labels: {app: d}}\nspec:\n  nodeName: n2\n  containers: [{name: c, image: lab, ports: [{containerPort: 80}]}]\n";
    let f = crate::lab::write(tmp.path(), "d.yaml", d);
    kubectl(&bins, &kc, &["apply", "-f", f.to_str().unwrap()]);
    kubectl(
        &bins,
        &kc,
        &[
            "wait",
            "-n",
            "gone",
            "pod/d",
            "--for=condition=Ready",
            "--timeout=60s",
        ],
    );
    assert_eq!(
        chain_of(&lab, "gone/d"),
        ["ptp"],
        "no Palisade in a new pod's chain"
    );
    // Pods keep their connectivity, with no policy: every pair connects, also the
    // pairs that were denied.
    let after = probe_tcp80(&lab);
    assert_eq!(after.len(), 6, "a, b and d: {after:?}");
    for (from, to, v) in &after {
        assert_eq!(v, "allow", "{from} -> {to} after uninstall: {after:?}");
    }
    eprintln!("uninstall test: {:.1} s", started.elapsed().as_secs_f64());
}

/// Two web pods that admit only `role=client` pods, and two clients (the scheduler
/// spreads the four over the nodes). `client-2`'s role is the parameter.
fn web_and_clients(client_2_role: &str) -> String {
    let pod = |name: &str, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: conv\n  labels: {{{labels}}}\n\
             spec:\n  containers:\n  - name: c\n    image: lab\n    ports:\n    - containerPort: 80\n---\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: conv\n---\n{}{}{}{}\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-from-clients\n  namespace: conv\n\
         spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  policyTypes: [Ingress]\n\
         \x20 ingress:\n  - from:\n    - podSelector: {{matchLabels: {{role: client}}}}\n",
        pod("web-1", "app: web"),
        pod("web-2", "app: web"),
        pod("client-1", "role: client"),
        pod("client-2", &format!("role: {client_2_role}")),
    )
}

/// Issue 9: "`lab apply` returns once every node reports the change in force". The
/// change here is not a policy: a pod's labels take it out of a policy's peers, so no
/// policy's version moves and no NodePolicyStatus says anything new; only the agents'
/// resourceVersions in force can. The probe runs right after `lab apply` returns, with
/// nothing waited for in between, and must measure the new verdicts on every node.
#[test]
fn lab_apply_of_a_label_change_returns_once_every_node_enforces_it() {
    let Some(_bins) = kube_privileged() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let lab = KubeLabGuard::up(2);
    let step = |name: &str, role: &str| {
        let f = tmp.path().join(name);
        std::fs::write(&f, web_and_clients(role)).unwrap();
        f
    };
    let verdict = |v: &[(String, String, String)], f: &str, t: &str| {
        v.iter()
            .find(|(a, b, _)| a == f && b == t)
            .map(|x| x.2.clone())
            .unwrap_or_else(|| panic!("no pair {f} -> {t}: {v:?}"))
    };
    for (file, role, client_2) in [
        ("1-client.yaml", "client", "allow"),
        ("2-other.yaml", "other", "deny"),
        ("3-client-again.yaml", "client", "allow"),
    ] {
        lab.apply(&step(file, role));
        let (measured, table) = lab.probe_compare("TCP", 80);
        assert!(
            table.contains("measured and simulated verdicts agree on all"),
            "{file}:\n{table}"
        );
        let v = crate::support::verdicts(&measured);
        for web in ["conv/web-1", "conv/web-2"] {
            assert_eq!(verdict(&v, "conv/client-1", web), "allow", "{file}: {v:?}");
            assert_eq!(verdict(&v, "conv/client-2", web), client_2, "{file}: {v:?}");
        }
    }
}
