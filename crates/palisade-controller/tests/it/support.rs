//! Set-up shared by the controller tests: a control plane with the CRDs and RBAC, the
//! components' identities, and polling with a deadline (never a sleep as
//! synchronisation).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_kube_lab::{Binaries, ControlPlane, Kubeconfig};
use palisade_testkit::{decide, Context, Decision, Need};

/// A control plane, or `None` when a developer without the prerequisites runs this
/// (never under CI or as root: then a missing prerequisite fails the test).
pub fn start(test: &str, needs: &[Need]) -> Option<ControlPlane> {
    let mut missing: Vec<String> = Binaries::locate()
        .err()
        .map(|e| e.to_string())
        .into_iter()
        .collect();
    missing.extend(palisade_testkit::missing(needs, Context::current()));
    match decide(test, &missing, Context::current()) {
        Decision::Run => {}
        Decision::Skip(msg) => {
            eprintln!("{msg}");
            return None;
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
    // The components' warnings go to the test's output (shown when it fails).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let cp = ControlPlane::start().expect("control plane starts");
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/palisade/crds");
    cp.kubectl(cp.admin(), &["apply", "-f", crds.to_str().unwrap()], None)
        .expect("Palisade's CRDs apply");
    cp.kubectl(
        cp.admin(),
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/nodepolicystatuses.palisade.io",
            "crd/networkpolicystatuses.palisade.io",
        ],
        None,
    )
    .expect("Palisade's CRDs are established");
    cp.kubectl(
        cp.admin(),
        &["create", "namespace", "palisade-system"],
        None,
    )
    .expect("namespace");
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(RBAC))
        .expect("RBAC applies");
    Some(cp)
}

/// Exactly the rules of docs/architecture.md ("RBAC: every verb each component uses").
pub const RBAC: &str = r#"{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"palisade-read-desired-state"},
  "rules":[{"apiGroups":[""],"resources":["namespaces","pods","nodes","services","serviceaccounts"],"verbs":["list","watch"]},
           {"apiGroups":["discovery.k8s.io"],"resources":["endpointslices"],"verbs":["list","watch"]},
           {"apiGroups":["networking.k8s.io"],"resources":["networkpolicies"],"verbs":["list","watch"]},
           {"apiGroups":["policy.networking.k8s.io"],"resources":["clusternetworkpolicies","adminnetworkpolicies","baselineadminnetworkpolicies"],"verbs":["list","watch"]},
           {"apiGroups":["projectcalico.org","crd.projectcalico.org"],"resources":["networkpolicies","globalnetworkpolicies","networksets","globalnetworksets"],"verbs":["list","watch"]}]},
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"palisade-agent"},
  "rules":[{"apiGroups":["palisade.io"],"resources":["nodepolicystatuses"],"verbs":["create","patch"]},
           {"apiGroups":["events.k8s.io"],"resources":["events"],"verbs":["create"]}]},
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"palisade-controller"},
  "rules":[{"apiGroups":["palisade.io"],"resources":["nodepolicystatuses"],"verbs":["list","watch"]},
           {"apiGroups":["palisade.io"],"resources":["networkpolicystatuses"],"verbs":["create","patch"]},
           {"apiGroups":["policy.networking.k8s.io"],"resources":["clusternetworkpolicies/status","adminnetworkpolicies/status","baselineadminnetworkpolicies/status"],"verbs":["patch"]},
           {"apiGroups":[""],"resources":["pods/status"],"verbs":["patch"]}]},
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"palisade-controller-lease","namespace":"palisade-system"},
  "rules":[{"apiGroups":["coordination.k8s.io"],"resources":["leases"],"verbs":["create"]},
           {"apiGroups":["coordination.k8s.io"],"resources":["leases"],"resourceNames":["palisade-controller"],"verbs":["get","update"]}]},
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"palisade-agent-read"},
  "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"palisade-read-desired-state"},
  "subjects":[{"kind":"ServiceAccount","name":"palisade-agent","namespace":"kube-system"}]},
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"palisade-agent"},
  "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"palisade-agent"},
  "subjects":[{"kind":"ServiceAccount","name":"palisade-agent","namespace":"kube-system"}]},
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"palisade-controller-read"},
  "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"palisade-read-desired-state"},
  "subjects":[{"kind":"ServiceAccount","name":"palisade-controller","namespace":"palisade-system"}]},
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"palisade-controller"},
  "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"palisade-controller"},
  "subjects":[{"kind":"ServiceAccount","name":"palisade-controller","namespace":"palisade-system"}]},
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"palisade-controller-lease","namespace":"palisade-system"},
  "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"palisade-controller-lease"},
  "subjects":[{"kind":"ServiceAccount","name":"palisade-controller","namespace":"palisade-system"}]}]}"#;

/// The controller's identity.
pub fn controller_identity(cp: &ControlPlane) -> Kubeconfig {
    cp.service_account_kubeconfig("palisade-system", "palisade-controller")
        .expect("a token for the controller's service account")
}

/// A client for `kc`.
pub async fn client(kc: &Kubeconfig) -> kube::Client {
    palisade_agent::run::kube_client(Some(kc.path()), None)
        .await
        .expect("client from kubeconfig")
}

/// Polls `f` until it returns `Some`, or panics with `what` (and the last value seen)
/// after `within`.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; last seen: {last}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kubectl get ... -o json` as admin, parsed.
pub fn get_json(cp: &ControlPlane, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut a: Vec<&str> = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = cp
        .kubectl(cp.admin(), &a, None)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&out).map_err(|e| e.to_string())
}

/// Applies a JSON or YAML manifest as admin.
pub fn apply(cp: &ControlPlane, manifest: &str) {
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(manifest))
        .unwrap_or_else(|e| panic!("apply: {e}\n{manifest}"));
}

/// A bpffs pin root of this test process's own, removed (with everything pinned
/// under it) on drop, also when the test panics.
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    /// A fresh root named after `tag` and this process.
    pub fn new(tag: &str) -> Self {
        PinRoot(PathBuf::from(format!(
            "/sys/fs/bpf/palisade-test-ctrl-{}-{tag}",
            std::process::id()
        )))
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = palisade_datapath::unpin_all_at(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A controller replica on a runtime of its own: dropping it ends every task of the
/// replica at once without releasing anything (a crash, as far as the Lease knows).
pub struct Replica {
    pub identity: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl Replica {
    pub fn start(kc: &Kubeconfig, identity: &str, lease: Duration, renew: Duration) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let kc = kc.clone();
        let id = identity.to_string();
        rt.spawn(async move {
            let client = client(&kc).await;
            let config = palisade_controller::run::ControllerConfig {
                lease: palisade_controller::lease::LeaseConfig {
                    namespace: "palisade-system".into(),
                    name: palisade_controller::lease::LEASE_NAME.into(),
                    identity: id,
                    duration: lease,
                    renew_every: renew,
                },
            };
            if let Err(e) = palisade_controller::run::run(client, config).await {
                eprintln!("controller stopped: {e:#}");
            }
        });
        Replica {
            identity: identity.to_string(),
            rt: Some(rt),
        }
    }

    /// Ends the replica abruptly.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Lease's holder, as admin reads it.
pub fn lease_holder(cp: &ControlPlane) -> Result<(String, i64), String> {
    let v = get_json(
        cp,
        &["lease", "-n", "palisade-system", "palisade-controller"],
    )?;
    let holder = v["spec"]["holderIdentity"]
        .as_str()
        .ok_or("no holder")?
        .to_string();
    Ok((holder, v["spec"]["leaseTransitions"].as_i64().unwrap_or(0)))
}

/// Paths of a test agent's files.
pub fn agent_dir(base: &Path, node: &str) -> PathBuf {
    let d = base.join(node);
    std::fs::create_dir_all(&d).unwrap();
    d
}
