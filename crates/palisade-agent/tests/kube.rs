//! `--source kubernetes` against the real upstream API server (etcd + kube-apiserver from
//! scripts/k8s-binaries.sh, TLS, RBAC): the agent's source authenticates as its own
//! service account, refuses to answer while it cannot list everything (fail closed:
//! never an empty desired state that would allow all), and follows creates, updates
//! and deletes once RBAC grants it read access. The network-policy-api CRDs are not
//! installed here: those kinds count as listed and empty.

use std::time::{Duration, Instant};

use palisade_agent::kube_source::{KubeSource, WatchedKind};
use palisade_agent::source::{Snapshot, Source};
use palisade_kube_lab::{Binaries, ControlPlane, Kubeconfig};
use palisade_testkit::{decide, Context, Decision};

fn start() -> Option<ControlPlane> {
    let missing: Vec<String> = Binaries::locate()
        .err()
        .map(|e| e.to_string())
        .into_iter()
        .collect();
    match decide("kube source", &missing, Context::current()) {
        Decision::Run => Some(ControlPlane::start().expect("control plane starts")),
        Decision::Skip(msg) => {
            eprintln!("{msg}");
            None
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `within`.
async fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const GRANT: &str = r#"{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"palisade-agent-read"},
  "rules":[{"apiGroups":[""],"resources":["namespaces","pods","nodes","services","serviceaccounts"],"verbs":["get","list","watch"]},
           {"apiGroups":["discovery.k8s.io"],"resources":["endpointslices"],"verbs":["get","list","watch"]},
           {"apiGroups":["networking.k8s.io"],"resources":["networkpolicies"],"verbs":["get","list","watch"]},
           {"apiGroups":["policy.networking.k8s.io"],"resources":["clusternetworkpolicies","adminnetworkpolicies","baselineadminnetworkpolicies"],"verbs":["get","list","watch"]},
           {"apiGroups":["projectcalico.org","crd.projectcalico.org"],"resources":["networkpolicies","globalnetworkpolicies","networksets","globalnetworksets"],"verbs":["list","watch"]}]},
 {"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"palisade-agent-read"},
  "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"palisade-agent-read"},
  "subjects":[{"kind":"ServiceAccount","name":"palisade-agent","namespace":"kube-system"}]}]}"#;

fn policy(port: u16) -> String {
    format!(
        r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{{"name":"web","namespace":"team-a"}},
 "spec":{{"podSelector":{{"matchLabels":{{"app":"web"}}}},
  "ingress":[{{"ports":[{{"protocol":"TCP","port":{port}}}]}}]}}}}"#
    )
}

fn port_of(s: &Snapshot) -> Option<serde_json::Value> {
    let np = s.cluster.network_policies.get("team-a/web")?;
    Some(serde_json::to_value(np).unwrap()["ingress"][0]["ports"][0]["Range"]["port"].clone())
}

/// The agent's service-account kubeconfig, and a runtime for its watchers.
fn agent_identity(cp: &ControlPlane) -> (Kubeconfig, tokio::runtime::Runtime) {
    let agent = cp
        .service_account_kubeconfig("kube-system", "palisade-agent")
        .expect("a token for the agent's service account");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (agent, rt)
}

/// The Kubernetes source, authenticated as `agent`.
async fn source_as(agent: &Kubeconfig) -> KubeSource {
    let client = palisade_agent::run::kube_client(Some(agent.path()), None)
        .await
        .expect("client from the agent's kubeconfig");
    KubeSource::start(client)
}

#[test]
fn follows_the_api_server_as_its_own_identity_and_fails_closed_until_it_can_list() {
    let Some(cp) = start() else { return };
    let (agent, rt) = agent_identity(&cp);
    rt.block_on(async {
        let mut src = source_as(&agent).await;
        // No grant yet: RBAC refuses the lists, and the source gives no answer at all.
        eventually(
            Duration::from_secs(30),
            "the pod watch to fail on RBAC",
            || {
                src.health()
                    .get(&WatchedKind::Pod)
                    .filter(|h| h.failing)
                    .cloned()
            },
        )
        .await;
        let err = src.load().unwrap_err().to_string();
        assert!(err.contains("Pod"), "{err}");
        assert!(err.contains("forbidden"), "the reason is said: {err}");

        cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(GRANT))
            .expect("grant");
        cp.kubectl(cp.admin(), &["create", "namespace", "team-a"], None)
            .expect("namespace");
        cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&policy(80)))
            .expect("policy");
        // Watches retry with backoff; once they list, everything is there at once.
        let snap = eventually(
            Duration::from_secs(120),
            "the first complete snapshot",
            || src.load().ok().filter(|s| port_of(s).is_some()),
        )
        .await;
        assert!(snap.cluster.namespaces.contains_key("team-a"));
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        let health = src.health();
        for kind in [
            WatchedKind::ClusterNetworkPolicy,
            WatchedKind::AdminNetworkPolicy,
            WatchedKind::BaselineAdminNetworkPolicy,
        ] {
            assert!(
                health[&kind].not_served,
                "{kind:?} is not installed: {health:?}"
            );
        }
        assert_eq!(port_of(&snap), Some(80.into()));
        // An update and a delete arrive as watch events.
        cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&policy(8080)))
            .expect("policy update");
        eventually(Duration::from_secs(30), "the update", || {
            src.changed()
                .then(|| src.load().ok())
                .flatten()
                .filter(|s| port_of(s) == Some(8080.into()))
        })
        .await;
        cp.kubectl(
            cp.admin(),
            &["delete", "networkpolicy", "-n", "team-a", "web"],
            None,
        )
        .expect("policy delete");
        eventually(Duration::from_secs(30), "the delete", || {
            src.load().ok().filter(|s| port_of(s).is_none())
        })
        .await;
    });
}

#[test]
fn the_last_state_stays_while_the_api_server_is_away_and_converges_when_it_returns() {
    let Some(mut cp) = start() else { return };
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(GRANT))
        .expect("grant");
    cp.kubectl(cp.admin(), &["create", "namespace", "team-a"], None)
        .expect("namespace");
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&policy(80)))
        .expect("policy");
    let (agent, rt) = agent_identity(&cp);
    rt.block_on(async {
        let mut src = source_as(&agent).await;
        eventually(Duration::from_secs(120), "the first snapshot", || {
            src.load().ok().filter(|s| port_of(s) == Some(80.into()))
        })
        .await;

        cp.stop_apiserver();
        eventually(
            Duration::from_secs(60),
            "a watch to notice the API server is gone",
            || src.health().values().any(|h| h.failing).then_some(()),
        )
        .await;
        // Away: the last state is still the answer (nothing flushed, nothing widened),
        // and the answer says the watches fail.
        let away = src.load().expect("the last state, not an error");
        assert_eq!(port_of(&away), Some(80.into()));
        assert!(away.cluster.namespaces.contains_key("team-a"));
        assert!(
            away.warnings.iter().any(|w| w.contains("failing since")),
            "{:?}",
            away.warnings
        );

        cp.start_apiserver().expect("the API server comes back");
        cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&policy(8080)))
            .expect("policy after the restart");
        cp.kubectl(cp.admin(), &["create", "namespace", "team-b"], None)
            .expect("namespace after the restart");
        eventually(
            Duration::from_secs(120),
            "convergence after the restart",
            || {
                let healthy = !src.health().values().any(|h| h.failing);
                src.load().ok().filter(|s| {
                    healthy
                        && port_of(s) == Some(8080.into())
                        && s.cluster.namespaces.contains_key("team-b")
                        && !s.warnings.iter().any(|w| w.contains("failing since"))
                })
            },
        )
        .await;
        // The watches came back because the probe saw the API server answer again, not
        // at the end of a backoff that had grown while it was away.
        let health = src.health();
        let retried: u64 = health.values().map(|h| h.retries_on_recovery).sum();
        let failed = health.values().filter(|h| h.errors > 0).count();
        eprintln!("{failed} watches failed while the API server was away; {retried} retries on its recovery");
        assert!(retried > 0, "no watch was retried on the recovery: {health:?}");
    });
}

/// Counts the writes that reach the kernel side.
struct CountingEnforcer {
    writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

mod counting {
    use super::CountingEnforcer;
    use palisade_agent::api::DatapathStatus;
    use palisade_agent::reconcile::{
        CounterSample, Enforcer, EnforcerError, KernelAttachment, KernelEndpoint,
    };
    use palisade_policy::compile::InUse;
    use palisade_policy::compiled::{Compiled, Delta};
    use std::sync::atomic::Ordering;

    fn none<T>() -> Result<T, EnforcerError> {
        Err(EnforcerError::Other {
            message: "no interfaces in this test".into(),
            retryable: false,
        })
    }

    impl Enforcer for CountingEnforcer {
        fn attach(&mut self, _: &str, ifname: &str) -> Result<u32, EnforcerError> {
            palisade_datapath::ifindex_of(ifname).or_else(|_| none())
        }
        fn detach(&mut self, _: &str) -> Result<(), EnforcerError> {
            Ok(())
        }
        fn release_if_gone(&mut self, _: &str, _: u32) -> Result<bool, EnforcerError> {
            Ok(true)
        }
        fn sync(&mut self, _: &Compiled) -> Result<(), EnforcerError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn apply(&mut self, delta: &Delta) -> Result<(), EnforcerError> {
            if !delta.ops.is_empty() {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
        fn in_use(&mut self) -> InUse {
            InUse::default()
        }
        fn endpoint_state(&mut self, _: u32) -> anyhow::Result<KernelEndpoint> {
            anyhow::bail!("no endpoints in this test")
        }
        fn attachment(&mut self, _: u32) -> anyhow::Result<KernelAttachment> {
            anyhow::bail!("no endpoints in this test")
        }
        fn counters(&mut self) -> anyhow::Result<Vec<CounterSample>> {
            Ok(Vec::new())
        }
        fn status(&mut self) -> DatapathStatus {
            DatapathStatus::default()
        }
    }
}

/// Creates a pod in team-a (and the namespace's default service account, which no
/// controller manager creates here and admission needs), and, when `ip` is given,
/// writes its status.podIP as a kubelet would.
fn pod(cp: &ControlPlane, manifest: &str, name: &str, ip: Option<&str>) {
    let _ = cp.kubectl(
        cp.admin(),
        &["create", "serviceaccount", "default", "-n", "team-a"],
        None,
    );
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(manifest))
        .expect("pod");
    if let Some(ip) = ip {
        let status = format!(r#"{{"status":{{"podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#);
        cp.kubectl(
            cp.admin(),
            &[
                "patch",
                "pod",
                name,
                "-n",
                "team-a",
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ],
            None,
        )
        .expect("pod status");
    }
}

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod",
 "metadata":{"name":"web-1","namespace":"team-a","labels":{"app":"web"}},
 "spec":{"nodeName":"node-a","containers":[{"name":"c","image":"lab","ports":[{"containerPort":80}]}]}}"#;

/// Every watch restarted (each kind listed again, as after `410 Gone`): the objects are
/// the same, so the source reports no change, the agent runs no pass (its generation in
/// force stays) and even a pass forced now writes nothing to the kernel; a real change
/// afterwards does write.
#[test]
fn a_relist_that_finds_nothing_new_writes_nothing_to_the_kernel() {
    use palisade_agent::reconcile::Reconciler;
    use std::sync::atomic::Ordering;
    let Some(cp) = start() else { return };
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(GRANT))
        .expect("grant");
    cp.kubectl(cp.admin(), &["create", "namespace", "team-a"], None)
        .expect("namespace");
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&policy(80)))
        .expect("policy");
    pod(&cp, POD, "web-1", Some("10.20.0.5"));
    let (agent, rt) = agent_identity(&cp);
    rt.block_on(async {
        let src = source_as(&agent).await;
        let watches = src.watches();
        let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let enforcer = CountingEnforcer {
            writes: writes.clone(),
        };
        let mut reconciler = Reconciler::new(
            Box::new(src),
            Box::new(enforcer),
            palisade_agent::registry::Registry::default(),
        )
        .with_local_node(Some("node-a".into()));
        eventually(
            Duration::from_secs(120),
            "the first pass with the pod's policy",
            || {
                reconciler.reconcile(true, false).ok()?;
                let ep = reconciler.compiled().endpoints.get("team-a/web-1")?;
                let np = reconciler
                    .snapshot()
                    .cluster
                    .network_policies
                    .get("team-a/web")?;
                (np.ingress.as_ref().map(Vec::len) == Some(1)).then_some(ep.ingress)
            },
        )
        .await;
        let generation = reconciler.generation();
        let written = writes.load(Ordering::SeqCst);
        assert!(written >= 1, "the first pass programs the kernel");
        assert!(!reconciler.source_changed());

        let completed = |h: &std::collections::BTreeMap<
            WatchedKind,
            palisade_agent::kube_source::WatchHealth,
        >| {
            h.iter()
                .filter(|(_, w)| !w.not_served)
                .map(|(k, w)| (*k, w.lists_completed))
                .collect::<Vec<_>>()
        };
        let before = completed(&watches.health());
        watches.restart();
        eventually(
            Duration::from_secs(60),
            "every served kind listed again",
            || {
                let now = completed(&watches.health());
                (now.len() == before.len()
                    && now
                        .iter()
                        .zip(&before)
                        .all(|(n, b)| n.0 == b.0 && n.1 > b.1))
                .then_some(())
            },
        )
        .await;
        assert!(
            !reconciler.source_changed(),
            "a relist that found the same objects is not a change: no pass runs"
        );
        assert_eq!(reconciler.generation(), generation);
        reconciler.reconcile(true, false).expect("a forced pass");
        assert_eq!(
            writes.load(Ordering::SeqCst),
            written,
            "nothing written to the kernel after a relist of unchanged objects"
        );

        // Metrics say so: two lists of each served kind, every watch up.
        let mut metrics = palisade_agent::metrics::Metrics::new();
        metrics.record_watches(&reconciler.watches());
        let text = metrics.encode(&[]);
        assert!(
            text.contains("palisade_kube_watch_relists_total{kind=\"Pod\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("palisade_kube_watch_up{kind=\"NetworkPolicy\"} 1"),
            "{text}"
        );

        // A real change is still seen, and written; `status` says when it is in force:
        // the kind's resource_version_in_force reaches the write's resourceVersion.
        cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&policy(8080)))
            .expect("policy update");
        let out = cp
            .kubectl_output(
                cp.admin(),
                &[
                    "get",
                    "networkpolicy",
                    "-n",
                    "team-a",
                    "web",
                    "-o",
                    "jsonpath={.metadata.resourceVersion}",
                ],
                None,
            )
            .expect("the policy's resourceVersion");
        let written_at: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a number");
        let in_force = |r: &Reconciler| {
            r.watches()
                .into_iter()
                .find(|w| w.kind == "NetworkPolicy")
                .and_then(|w| w.resource_version_in_force)
        };
        assert!(
            in_force(&reconciler) < Some(written_at),
            "not in force before a pass"
        );
        eventually(
            Duration::from_secs(30),
            "the update reaches the kernel",
            || {
                if reconciler.source_changed() {
                    reconciler.reconcile(true, false).ok()?;
                }
                (writes.load(Ordering::SeqCst) > written
                    && in_force(&reconciler) >= Some(written_at))
                .then_some(())
            },
        )
        .await;
    });
}

/// A TCP forwarder to the API server that can be paused: while paused, no byte moves
/// on any connection through it (a watch that has fallen behind, honestly: the agent's
/// watch connections stay open and simply hear nothing).
struct Pausable {
    addr: std::net::SocketAddr,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Pausable {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = paused.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut r, mut w) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let p = p.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            // Held, not dropped: delivered once resumed.
                            while p.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Pausable { addr, paused }
    }
}

/// CNI ADD for a pod created a moment ago while the agent's watch is behind (paused at
/// a forwarder): the agent reads the Pod directly (GET, as its own identity), and the
/// pass the ADD waits for programs the pod's policy with the registration's address
/// (the Pod has no status.podIP yet, as before a real kubelet's CNI ADD returns).
#[test]
fn a_registration_for_a_pod_the_watch_has_not_delivered_gets_its_policy_in_force() {
    use palisade_agent::reconcile::Reconciler;
    use palisade_agent::registry::Interface;
    use palisade_policy::compiled::TableAction;
    use std::sync::atomic::Ordering;
    let Some(cp) = start() else { return };
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(GRANT))
        .expect("grant");
    cp.kubectl(cp.admin(), &["create", "namespace", "team-a"], None)
        .expect("namespace");
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&policy(80)))
        .expect("policy");
    let (agent, rt) = agent_identity(&cp);
    let upstream: std::net::SocketAddr = cp
        .server()
        .strip_prefix("https://")
        .and_then(|a| a.parse().ok())
        .expect("the API server's address");
    let (proxy, src) = rt.block_on(async {
        let proxy = Pausable::start(upstream).await;
        let kc = kube::config::Kubeconfig::read_from(agent.path()).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        config.cluster_url = format!("https://{}", proxy.addr).parse().unwrap();
        let watched = kube::Client::try_from(config).unwrap();
        let direct = palisade_agent::run::kube_client(Some(agent.path()), None)
            .await
            .unwrap();
        (proxy, KubeSource::start(watched).with_reads(direct))
    });
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut reconciler = Reconciler::new(
        Box::new(src),
        Box::new(CountingEnforcer { writes }),
        palisade_agent::registry::Registry::default(),
    )
    .with_local_node(Some("node-a".into()));
    // Synchronous polling: the direct read blocks on the runtime, so the reconciler
    // runs outside it (as on the agent's reconciler thread).
    let poll = |what: &str, f: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    poll("the first pass with the policy", &mut || {
        reconciler.reconcile(true, false).is_ok()
            && reconciler
                .snapshot()
                .cluster
                .network_policies
                .contains_key("team-a/web")
    });

    proxy.paused.store(true, Ordering::SeqCst);
    pod(&cp, &POD.replace("web-1", "web-2"), "web-2", None);
    // The watch is behind: a pass now does not know the pod.
    reconciler
        .reconcile(true, false)
        .expect("a pass while paused");
    assert!(
        !reconciler.knows_pod("team-a/web-2"),
        "the watch must be behind"
    );

    let ip: std::net::IpAddr = "10.20.0.7".parse().unwrap();
    reconciler
        .register(Interface {
            pod: "team-a/web-2".into(),
            host_ifname: "lo".into(),
            ifindex: palisade_datapath::ifindex_of("lo").unwrap(),
            ips: vec![ip],
            container_id: "sandbox-1".into(),
            registered_at: 0,
            seen: false,
        })
        .expect("registration");
    assert!(reconciler.source_changed(), "the direct read is a change");
    reconciler.reconcile(true, false).expect("the ADD's pass");
    assert!(
        reconciler.in_force("team-a/web-2").is_some(),
        "in force on the ADD's own pass"
    );
    let compiled = reconciler.compiled();
    let ep = &compiled.endpoints["team-a/web-2"];
    assert_eq!(ep.ips, vec![ip], "the registration's address");
    let world = compiled.lookup_identity("198.51.100.1".parse().unwrap());
    assert_eq!(
        compiled.lookup(ep.ingress, world, 6, 80).action,
        TableAction::Allow
    );
    assert_eq!(
        compiled.lookup(ep.ingress, world, 6, 81).action,
        TableAction::Deny,
        "the policy selecting app=web is in force: only port 80 is open"
    );
    proxy.paused.store(false, Ordering::SeqCst);
    drop(rt);
}

/// The chart rendered (`deploy/manifests/palisade.yaml`, equal to `helm template`: a
/// palisade-deploy test checks it): its CRDs, Namespace, ServiceAccounts and the
/// agent's RBAC, so the agents below run with exactly what the chart grants.
fn chart_agent_objects() -> String {
    const CHART: &str = include_str!("../../../deploy/manifests/palisade.yaml");
    const SOURCES: &[&str] = &[
        "crds/",
        "templates/namespace.yaml",
        "templates/serviceaccounts.yaml",
        "templates/rbac-agent.yaml",
    ];
    CHART
        .split("\n---\n")
        .filter(|doc| {
            SOURCES
                .iter()
                .any(|s| doc.contains(&format!("# Source: palisade/{s}")))
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A bpffs pin root of this test's own, removed with everything under it on drop.
struct PinRoot(std::path::PathBuf);

impl Drop for PinRoot {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = palisade_datapath::unpin_all_at(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const NODES: &str = r#"{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"v1","kind":"Node","metadata":{"name":"ev-n1"}},
 {"apiVersion":"v1","kind":"Node","metadata":{"name":"ev-n2"}},
 {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-a"}}]}"#;

/// Accepted by the API server (the v0.1.1 AdminNetworkPolicy CRD has no rule against
/// it) and rejected by Palisade's decoder: a port range whose start is above its end.
fn bad_range(start: u16) -> String {
    format!(
        r#"{{"apiVersion":"policy.networking.k8s.io/v1alpha1","kind":"AdminNetworkPolicy",
 "metadata":{{"name":"bad-range"}},
 "spec":{{"priority":20,"subject":{{"namespaces":{{}}}},
   "ingress":[{{"name":"x","action":"Deny","from":[{{"namespaces":{{"namespaceSelector":{{}}}}}}],
               "ports":[{{"portRange":{{"protocol":"TCP","start":{start},"end":80}}}}]}}]}}}}"#
    )
}

fn json(cp: &ControlPlane, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = cp
        .kubectl(cp.admin(), &a, None)
        .unwrap_or_else(|e| panic!("kubectl {a:?}: {e}"));
    serde_json::from_str(&out).unwrap()
}

/// The PolicyRejected Events on `name`, as admin lists them.
fn rejected_events(cp: &ControlPlane, name: &str) -> Vec<serde_json::Value> {
    json(cp, &["events.events.k8s.io", "-A"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "PolicyRejected" && e["regarding"]["name"] == name)
        .cloned()
        .collect()
}

/// `palisade_kube_events_total{result="..."}` of one agent.
fn event_count(socket: &std::path::Path, result: &str) -> u64 {
    let m = palisade_agent::api::call(
        socket,
        &palisade_agent::api::Metrics,
        Duration::from_secs(5),
    )
    .expect("metrics");
    let series = format!("palisade_kube_events_total{{result=\"{result}\"}} ");
    m.data
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in the metrics:\n{}", m.data))
}

/// Issue 9: "Bad objects from the API: one invalid policy is rejected alone, with a
/// Kubernetes Event on that object naming the field; everything else stays enforced."
/// Two real agents (BPF, node-scoped) with the chart's identity and RBAC: one Event per
/// rejected version cluster-wide (not one per node, per relist or per resync; a status
/// or label write is no new version), the field in its note, and the good policy in
/// force on both nodes.
#[test]
fn a_rejected_policy_gets_one_event_naming_the_field_and_the_good_one_stays_in_force() {
    use palisade_testkit::Need;
    let mut missing: Vec<String> = Binaries::locate()
        .err()
        .map(|e| e.to_string())
        .into_iter()
        .collect();
    missing.extend(palisade_testkit::missing(
        &[Need::Root, Need::Bpffs],
        Context::current(),
    ));
    let cp = match decide("kube events", &missing, Context::current()) {
        Decision::Run => ControlPlane::start().expect("control plane starts"),
        Decision::Skip(msg) => return eprintln!("{msg}"),
        Decision::Fail(msg) => panic!("{msg}"),
    };
    palisade_kube_lab::crds::install(&cp).expect("network-policy-api CRDs");
    cp.kubectl(
        cp.admin(),
        &["apply", "-f", "-"],
        Some(&chart_agent_objects()),
    )
    .expect("the chart's CRDs, namespace, service accounts and agent RBAC");
    cp.kubectl(
        cp.admin(),
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/nodepolicystatuses.palisade.io",
        ],
        None,
    )
    .expect("NodePolicyStatus established");
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(NODES))
        .expect("nodes");

    let dir = tempfile::tempdir().unwrap();
    let nodes = ["ev-n1", "ev-n2"];
    let pins: Vec<PinRoot> = nodes
        .iter()
        .map(|n| {
            PinRoot(
                format!(
                    "/sys/fs/bpf/palisade-test-events-{}-{n}",
                    std::process::id()
                )
                .into(),
            )
        })
        .collect();
    let sockets: Vec<std::path::PathBuf> = nodes
        .iter()
        .map(|n| dir.path().join(n).join("agent.sock"))
        .collect();
    let agents = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (node, pin) in nodes.iter().zip(&pins) {
        // The DaemonSet's identity (chart: palisade-system/palisade-agent).
        let kc = cp
            .service_account_kubeconfig("palisade-system", "palisade-agent")
            .expect("agent token");
        let state = dir.path().join(node);
        std::fs::create_dir_all(&state).unwrap();
        let config = palisade_agent::run::AgentConfig {
            source: palisade_agent::run::SourceConfig::Kubernetes {
                kubeconfig: Some(kc.path().to_path_buf()),
                context: None,
            },
            state_dir: state.clone(),
            socket: state.join("agent.sock"),
            read_only_socket: palisade_agent::api::read_only_socket_beside(
                &state.join("agent.sock"),
            ),
            read_only_group: 0,
            pin_root: pin.0.clone(),
            decision_log: None,
            log_mode: Default::default(),
            sample_allow: 1,
            events: Default::default(),
            rotation: Default::default(),
            api: Default::default(),
            sizes: Default::default(),
            registration_ttl: palisade_agent::registry::DEFAULT_REGISTRATION_TTL,
            revoke_established: true,
            node_name: Some(node.to_string()),
            publish_status: true,
        };
        agents.spawn(async move {
            if let Err(e) = palisade_agent::run::run(config).await {
                panic!("agent stopped: {e:#}");
            }
        });
    }

    // One good and one bad policy, through the API server.
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&policy(80)))
        .expect("good policy");
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&bad_range(90)))
        .expect("the API server accepts the bad policy");
    let web_rv: u64 = json(&cp, &["networkpolicy", "-n", "team-a", "web"])["metadata"]
        ["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let bad = json(
        &cp,
        &["adminnetworkpolicies.policy.networking.k8s.io", "bad-range"],
    );
    let (uid, rv1) = (
        bad["metadata"]["uid"].as_str().unwrap().to_string(),
        bad["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string(),
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let event = rt.block_on(eventually(
        Duration::from_secs(90),
        "a PolicyRejected Event on bad-range",
        || rejected_events(&cp, "bad-range").into_iter().next(),
    ));
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["reportingController"], "palisade.io/agent", "{event}");
    assert!(
        nodes.contains(&event["reportingInstance"].as_str().unwrap()),
        "written by one of the agents: {event}"
    );
    assert_eq!(
        event["metadata"]["namespace"], "default",
        "cluster-scoped: {event}"
    );
    assert_eq!(event["regarding"]["kind"], "AdminNetworkPolicy");
    assert_eq!(event["regarding"]["uid"], uid.as_str());
    assert_eq!(event["regarding"]["resourceVersion"], rv1.as_str());
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with("spec.ingress[0].ports[0]") && note.contains("90"),
        "the note names the field and the error: {note}"
    );

    // The good policy is in force on both nodes, and the bad one rejected there.
    for socket in &sockets {
        rt.block_on(eventually(
            Duration::from_secs(60),
            "the good policy in force and the bad one rejected",
            || {
                let s = palisade_agent::api::call(
                    socket,
                    &palisade_agent::api::Status,
                    Duration::from_secs(5),
                )
                .ok()?
                .data;
                let np = s.watches.iter().find(|w| w.kind == "NetworkPolicy")?;
                (np.resource_version_in_force? >= web_rv
                    && s.errors.iter().any(|e| e.contains("bad-range")))
                .then_some(())
            },
        ));
    }

    // Not per node, per relist or per resync: a label write (a new resourceVersion,
    // the same generation) and full resyncs of both agents write nothing new.
    cp.kubectl(
        cp.admin(),
        &[
            "label",
            "adminnetworkpolicies.policy.networking.k8s.io",
            "bad-range",
            "touched=yes",
        ],
        None,
    )
    .expect("label");
    let label_rv: u64 = json(
        &cp,
        &["adminnetworkpolicies.policy.networking.k8s.io", "bad-range"],
    )["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for socket in &sockets {
        rt.block_on(eventually(
            Duration::from_secs(60),
            "the label write seen and a full resync run",
            || {
                let s = palisade_agent::api::call(
                    socket,
                    &palisade_agent::api::Status,
                    Duration::from_secs(5),
                )
                .ok()?
                .data;
                let anp = s.watches.iter().find(|w| w.kind == "AdminNetworkPolicy")?;
                (anp.resource_version_in_force? >= label_rv).then_some(())
            },
        ));
        for _ in 0..3 {
            palisade_agent::api::call(
                socket,
                &palisade_agent::api::Sync { full: true },
                Duration::from_secs(30),
            )
            .expect("full resync");
        }
    }
    // A new version, still invalid: one more Event (the marker that the writers have
    // handled everything before it).
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&bad_range(95)))
        .expect("second bad version");
    let events = rt.block_on(eventually(
        Duration::from_secs(60),
        "the second version's Event",
        || {
            let e = rejected_events(&cp, "bad-range");
            (e.len() >= 2).then_some(e)
        },
    ));
    assert_eq!(
        events.len(),
        2,
        "one Event per rejected version, not per node or resync: {events:#?}"
    );
    assert!(events
        .iter()
        .any(|e| e["note"].as_str().unwrap().contains("95")));
    // Each agent tried each version once (both are writers with 2 nodes): 2 created
    // in all, the other attempts answered 409; nothing failed.
    rt.block_on(eventually(
        Duration::from_secs(30),
        "each agent to have tried both versions",
        || {
            sockets
                .iter()
                .all(|s| event_count(s, "written") + event_count(s, "exists") == 2)
                .then_some(())
        },
    ));
    let written: u64 = sockets.iter().map(|s| event_count(s, "written")).sum();
    assert_eq!(written, 2);
    for s in &sockets {
        assert_eq!(
            event_count(s, "failed"),
            0,
            "the chart's RBAC allows the create"
        );
    }
    // Both nodes publish the good policy in force at its version, and the bad one
    // rejected at its new version (NodePolicyStatus is written at most once a second).
    for node in nodes {
        rt.block_on(eventually(
            Duration::from_secs(30),
            "the node's NodePolicyStatus",
            || {
                let n = json(&cp, &["nodepolicystatuses.palisade.io", node])["spec"].clone();
                let web = &n["policies"]["NetworkPolicy/team-a/web"];
                let bad_rv = &n["errors"][0]["resourceVersion"];
                (web["resourceVersion"] == web_rv.to_string().as_str()
                    && n["errors"][0]["name"] == "bad-range"
                    && bad_rv != rv1.as_str())
                .then_some(())
            },
        ));
    }
    // The agents' reconciler threads end before the pin roots are removed, or a pass
    // still running re-creates pins under a root just removed.
    let stopping = Instant::now();
    agents.shutdown_timeout(AGENTS_STOP);
    assert!(
        stopping.elapsed() < AGENTS_STOP,
        "the agents did not stop within {AGENTS_STOP:?}: their pins may outlive the test"
    );
    let roots: Vec<std::path::PathBuf> = pins.iter().map(|p| p.0.clone()).collect();
    drop(pins);
    for root in roots {
        assert!(!root.exists(), "{} removed", root.display());
    }
}

/// How long the agents get to finish their pass and end once a test is done.
const AGENTS_STOP: Duration = Duration::from_secs(30);

/// Installs Palisade's projectcalico.org/v3 CRDs (as the chart does with
/// `calico.serveCRDs`) and waits until they are served.
fn install_calico_crds(cp: &ControlPlane) {
    cp.kubectl(
        cp.admin(),
        &["apply", "-f", "-"],
        Some(&palisade_crds::calico::calico_crds_yaml()),
    )
    .expect("Calico CRDs");
    for name in palisade_crds::calico::CRD_NAMES {
        cp.kubectl(
            cp.admin(),
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{name}"),
            ],
            None,
        )
        .expect("CRD established");
    }
}

const SEED_POLICY: &str =
    include_str!("../../../examples/calico-imds-api/01-deny-k8s-api-and-imds.yaml");

#[test]
fn the_seed_002_calico_policy_applied_with_kubectl_is_read_and_a_bad_one_is_rejected_alone() {
    let Some(cp) = start() else { return };
    install_calico_crds(&cp);
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(GRANT))
        .expect("grant");
    // The article's YAML, unchanged, through kubectl (strict field validation).
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(SEED_POLICY))
        .expect("kubectl apply of the seed-002 policy");
    // A misspelt field is refused by the API server itself (the schema declares every
    // field), not pruned.
    let typo = r#"{"apiVersion":"projectcalico.org/v3","kind":"NetworkPolicy",
      "metadata":{"name":"typo","namespace":"default"},
      "spec":{"egress":[{"action":"Deny","destination":{"notNet":["10.0.0.0/8"]}}]}}"#;
    let err = cp
        .kubectl(cp.admin(), &["apply", "-f", "-"], Some(typo))
        .expect_err("an unknown field is refused")
        .to_string();
    assert!(err.contains("notNet"), "{err}");
    // One the API accepts but Palisade does not enforce: rejected alone, field named.
    let tiered = r#"{"apiVersion":"projectcalico.org/v3","kind":"GlobalNetworkPolicy",
      "metadata":{"name":"security.tiered"},
      "spec":{"tier":"security","selector":"all()","egress":[{"action":"Deny"}]}}"#;
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(tiered))
        .expect("a tiered policy is valid for the API server");
    let set = r#"{"apiVersion":"projectcalico.org/v3","kind":"GlobalNetworkSet",
      "metadata":{"name":"imds","labels":{"role":"imds"}},
      "spec":{"nets":["169.254.169.254"]}}"#;
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(set))
        .expect("network set");

    let (agent, rt) = agent_identity(&cp);
    rt.block_on(async {
        let mut src = source_as(&agent).await;
        let key = "NetworkPolicy.projectcalico.org/default/deny-k8s-api-and-imds";
        let snap = eventually(Duration::from_secs(120), "the Calico policy", || {
            src.load()
                .ok()
                .filter(|s| s.cluster.calico_policies.contains_key(key))
        })
        .await;
        let p = &snap.cluster.calico_policies[key];
        let egress = p.egress.as_ref().expect("types: Egress");
        assert_eq!(egress.len(), 3, "{p:?}");
        assert!(p.ingress.is_none());
        assert_eq!(
            egress[1]
                .peer
                .service
                .as_ref()
                .map(|s| (s.namespace.as_str(), s.name.as_str())),
            Some(("default", "kubernetes"))
        );
        assert_eq!(
            snap.cluster.calico_policies.len(),
            1,
            "the tiered one is out"
        );
        assert!(snap
            .cluster
            .network_sets
            .contains_key("GlobalNetworkSet/imds"));
        let tier_errors: Vec<_> = snap
            .errors
            .iter()
            .filter(|e| e.field() == Some("spec.tier"))
            .collect();
        assert_eq!(tier_errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        let health = src.health();
        assert!(!health[&WatchedKind::CalicoNetworkPolicy].not_served);
        assert!(
            health[&WatchedKind::CalicoStoredNetworkPolicy].not_served,
            "Calico is not installed: {health:?}"
        );
        assert!(
            snap.versions.iter().any(|v| v.policy.key() == key),
            "reported in the node's status: {:?}",
            snap.versions
        );

        // Deleted with kubectl: gone from the desired state.
        cp.kubectl(cp.admin(), &["delete", "-f", "-"], Some(SEED_POLICY))
            .expect("delete");
        eventually(Duration::from_secs(30), "the deletion", || {
            src.load()
                .ok()
                .filter(|s| s.cluster.calico_policies.is_empty())
        })
        .await;
    });
}
