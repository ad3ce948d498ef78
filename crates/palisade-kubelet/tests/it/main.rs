//! The lab kubelet against the real control plane (etcd, kube-apiserver with
//! `Node,RBAC` + NodeRestriction, kube-controller-manager, kube-scheduler), each node a
//! network namespace made here, the kubelet run as its binary with the node's client
//! certificate. Privileged; fails (never skips) as root or in CI without the binaries.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade_kube_lab::{Binaries, ControlPlane};
use palisade_kubelet::records::PodRecord;
use palisade_lab::netns::NetNs;
use palisade_testkit::{decide, Context, Decision};

mod failures;
mod network;
mod pods;
mod restart;

/// How long the cluster gets to react (schedule, make a pod, report).
pub const REACT: Duration = Duration::from_secs(90);
/// Pause between polls.
pub const POLL: Duration = Duration::from_millis(200);

/// A control plane with controllers, or `None` for a developer without binaries/root.
pub fn cluster() -> Option<ControlPlane> {
    let mut missing = palisade_testkit::missing(palisade_testkit::LAB, Context::current());
    if let Err(e) = Binaries::locate() {
        missing.push(e.to_string());
    }
    let thread = std::thread::current();
    match decide(
        thread.name().unwrap_or("test"),
        &missing,
        Context::current(),
    ) {
        Decision::Run => {}
        Decision::Skip(msg) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{msg}");
            return None;
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
    let mut cp = ControlPlane::start().expect("control plane starts");
    cp.start_controllers().expect("controllers start");
    Some(cp)
}

static NODES: AtomicUsize = AtomicUsize::new(0);

/// One lab node: its namespace (with the node address on its loopback), its
/// state directory and its kubelet process. Dropping it stops the kubelet, tears its
/// pods down and deletes the namespace.
pub struct TestNode {
    pub name: String,
    pub netns: String,
    pub ip: IpAddr,
    pub cidr: ipnet::IpNet,
    pub state_dir: PathBuf,
    /// Holds the state directory, the chain file and the kubelet's logs; kept when
    /// the test fails.
    dir: PathBuf,
    kubeconfig: PathBuf,
    chain: Option<PathBuf>,
    pub cni_dirs: Vec<PathBuf>,
    kubelet: Option<Child>,
    starts: usize,
}

impl TestNode {
    /// Node `tag` with address `ip` and pod CIDR `cidr`, kubelet started.
    pub fn start(cp: &ControlPlane, tag: &str, ip: &str, cidr: &str) -> TestNode {
        Self::start_with(cp, tag, ip, cidr, None, Vec::new())
    }

    /// Same with chained plugins (from `extra_dirs` too).
    pub fn start_with(
        cp: &ControlPlane,
        tag: &str,
        ip: &str,
        cidr: &str,
        chain: Option<serde_json::Value>,
        extra_dirs: Vec<PathBuf>,
    ) -> TestNode {
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let name = format!("plk{}-{n}{tag}", std::process::id());
        let netns = format!("{name}-node");
        let ns = NetNs::create(&netns).expect("node namespace");
        for (k, v) in palisade_lab::lab::NODE_SYSCTLS {
            ns.sysctl(k, v).expect("sysctl");
        }
        // The node address on the namespace's loopback (no dummy module needed).
        ip_cmd(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "lo",
        ]);
        ns.persist();
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let kc = cp
            .client_cert_kubeconfig(&format!("system:node:{name}"), Some("system:nodes"))
            .expect("node credentials");
        let chain = chain.map(|c| {
            let f = dir.join("chain.json");
            std::fs::write(&f, c.to_string()).unwrap();
            f
        });
        let mut cni_dirs = vec![PathBuf::from(palisade_testkit::CNI_DIR)];
        cni_dirs.extend(extra_dirs);
        let mut node = TestNode {
            name,
            netns,
            ip: ip.parse().unwrap(),
            cidr: cidr.parse().unwrap(),
            state_dir,
            dir,
            kubeconfig: kc.path().to_owned(),
            chain,
            cni_dirs,
            kubelet: None,
            starts: 0,
        };
        node.start_kubelet();
        node
    }

    /// Starts (again) the kubelet process.
    pub fn start_kubelet(&mut self) {
        assert!(self.kubelet.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let exe = env!("CARGO_BIN_EXE_palisade-lab-kubelet");
        let mut cmd = Command::new(exe);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node-name", &self.name, "--netns", &self.netns])
            .args(["--node-ip", &self.ip.to_string()])
            .args(["--pod-cidr", &self.cidr.to_string()])
            .arg("--server")
            .arg(exe)
            .args(["--server-arg", "serve"])
            .arg("--state-dir")
            .arg(&self.state_dir);
        for d in &self.cni_dirs {
            cmd.arg("--cni-bin-dir").arg(d);
        }
        if let Some(c) = &self.chain {
            cmd.arg("--chain").arg(c);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.kubelet = Some(cmd.spawn().expect("kubelet starts"));
    }

    /// SIGTERM to the kubelet, and waits for it to exit (pods keep running).
    pub fn stop_kubelet(&mut self) {
        if let Some(mut c) = self.kubelet.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("kubelet ignored SIGTERM:\n{}", self.log());
                }
                std::thread::sleep(POLL);
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("kubelet.{}.log", self.starts))
    }

    /// The kubelet's log (current run).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The record of pod `uid`, if the kubelet has one.
    pub fn record(&self, uid: &str) -> Option<PodRecord> {
        let f = self.state_dir.join("pods").join(format!("{uid}.json"));
        serde_json::from_slice(&std::fs::read(f).ok()?).ok()
    }

    /// The log of a pod's processes.
    pub fn pod_log(&self, rec: &PodRecord) -> PathBuf {
        palisade_kubelet::records::StateDir::open(&self.state_dir)
            .unwrap()
            .pod_log(rec)
    }

    /// Connects over TCP from the node namespace and returns what the server says.
    pub fn tcp_from_node(&self, ip: IpAddr, port: u16) -> Result<String, String> {
        NetNs::open(&self.netns)
            .run_in(|| {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2))
                        .map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).map_err(|e| e.to_string())?;
                Ok(out.trim().to_string())
            })
            .expect("node namespace")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.kubelet.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            // The pods' logs (arrivals, senders) go with the state directory: keep a copy.
            let _ = Command::new("cp")
                .arg("-r")
                .arg(self.state_dir.join("logs"))
                .arg(self.dir.join("pod-logs"))
                .status();
        }
        for p in palisade_kubelet::teardown(&self.state_dir) {
            eprintln!("teardown: {p}");
        }
        let _ = NetNs::delete(&self.netns);
        if std::thread::panicking() {
            eprintln!("kubelet logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl apply` of a JSON object as admin (test set-up only).
pub fn apply(cp: &ControlPlane, obj: serde_json::Value) {
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&obj.to_string()))
        .expect("kubectl apply");
}

/// `kubectl get KIND NAME -n NS -o json`, `None` if not found.
pub fn get(cp: &ControlPlane, args: &[&str]) -> Option<serde_json::Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = cp
        .kubectl_output(cp.admin(), &full, None)
        .expect("kubectl runs");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("NotFound"), "kubectl {full:?}: {err}");
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

/// The condition `ty` of an object's status, if any.
pub fn condition<'a>(obj: &'a serde_json::Value, ty: &str) -> Option<&'a serde_json::Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

/// Polls `f` until it returns `Some`, failing with `what` and `context()` at the deadline.
pub fn wait_for<T>(
    what: &str,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + REACT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(POLL);
    }
}

/// Waits until pod `ns/name` is Running and Ready; returns it.
pub fn wait_ready(cp: &ControlPlane, node: &TestNode, ns: &str, name: &str) -> serde_json::Value {
    wait_for(
        &format!("pod {ns}/{name} Ready"),
        || {
            format!(
                "pod: {}\nkubelet log:\n{}",
                get(cp, &["pod", name, "-n", ns]).unwrap_or_default(),
                node.log()
            )
        },
        || {
            let p = get(cp, &["pod", name, "-n", ns])?;
            (p["status"]["phase"] == "Running"
                && condition(&p, "Ready").is_some_and(|c| c["status"] == "True"))
            .then_some(p)
        },
    )
}

/// A namespace for a test.
pub fn namespace(cp: &ControlPlane, name: &str) {
    cp.kubectl(cp.admin(), &["create", "namespace", name], None)
        .expect("namespace");
    // Admission refuses pods until the namespace's default ServiceAccount exists.
    wait_for("the default ServiceAccount", String::new, || {
        get(cp, &["serviceaccount", "default", "-n", name])
    });
}

/// A pod manifest with a container serving `ports` ("80/TCP").
pub fn pod_manifest(ns: &str, name: &str, ports: &[(u16, &str)]) -> serde_json::Value {
    let ports: Vec<_> = ports
        .iter()
        .map(|(p, proto)| serde_json::json!({"containerPort": p, "protocol": proto}))
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "palisade.invalid/lab", "ports": ports}]}
    })
}

/// Whether `path` exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}
