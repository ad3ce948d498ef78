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
fn kube_privileged() -> Option<Binaries> {
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
        let name = format!("k{}", std::process::id() % 100_000);
        let guard = KubeLabGuard { name };
        let cni = cni_dir().display().to_string();
        let nodes = nodes.to_string();
        run(&mut guard.cmd(&["up", "--kubernetes", "--nodes", &nodes, "--cni-bin", &cni]));
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

    // The agent's identity is its ServiceAccount with least privilege.
    let agent = "--as=system:serviceaccount:kube-system:palisade-agent";
    for (verb, resource, allowed) in [
        ("watch", "pods", true),
        ("list", "networkpolicies.networking.k8s.io", true),
        ("list", "endpointslices.discovery.k8s.io", true),
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
    let netns: Vec<String> = ["api", "net", "n1", "n2"]
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
