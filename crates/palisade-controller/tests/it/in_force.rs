//! Two real agents, node-scoped (`--node-name n1` / `n2`, pods bound to Node objects that
//! no kubelet runs), publish their NodePolicyStatus; the controller answers per policy
//! and per pod. Every component runs as its own service account with the RBAC of
//! docs/architecture.md.

use std::time::Duration;

use palisade_kube_lab::ControlPlane;
use palisade_testkit::Need;

use crate::support::*;

const NODES_AND_PODS: &str = r#"{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"v1","kind":"Node","metadata":{"name":"n1","labels":{"kubernetes.io/hostname":"n1"}}},
 {"apiVersion":"v1","kind":"Node","metadata":{"name":"n2","labels":{"kubernetes.io/hostname":"n2"}}},
 {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-a"}},
 {"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"team-a"}},
 {"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-1","namespace":"team-a","labels":{"app":"web"}},
  "spec":{"nodeName":"n1","readinessGates":[{"conditionType":"palisade.io/policy-enforced"}],
          "containers":[{"name":"c","image":"registry.invalid/web"}]}},
 {"apiVersion":"v1","kind":"Pod","metadata":{"name":"db-1","namespace":"team-a","labels":{"app":"db"}},
  "spec":{"nodeName":"n2","containers":[{"name":"c","image":"registry.invalid/db"}]}}]}"#;

const WEB: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"web","namespace":"team-a"},
 "spec":{"podSelector":{"matchLabels":{"app":"web"}},"ingress":[{"ports":[{"port":80}]}]}}"#;

/// Accepted by the API server (the v0.1.1 CRD has no rule for it) but rejected by
/// Palisade's decoder: a port range whose start is not below its end (later upstream
/// releases reject it with a CEL rule). Its peer is written the way the v0.1.1 CRD
/// spells it (`pods.namespaces.namespaceSelector`), which Palisade's decoder, following
/// a later v1alpha1, rejects too; the test needs only that the object is rejected,
/// with the rule named.
const BAD: &str = r#"{"apiVersion":"policy.networking.k8s.io/v1alpha1","kind":"AdminNetworkPolicy",
 "metadata":{"name":"bad-range"},
 "spec":{"priority":20,"subject":{"namespaces":{}},
         "ingress":[{"name":"x","action":"Deny","from":[{"pods":{"namespaces":{"namespaceSelector":{}},"podSelector":{}}}],
                     "ports":[{"portRange":{"protocol":"TCP","start":90,"end":80}}]}]}}"#;

const ADMIN: &str = r#"{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"policy.networking.k8s.io/v1alpha1","kind":"AdminNetworkPolicy","metadata":{"name":"team-a-deny"},
  "spec":{"priority":10,"subject":{"namespaces":{"matchLabels":{"kubernetes.io/metadata.name":"team-a"}}}}},
 {"apiVersion":"policy.networking.k8s.io/v1alpha2","kind":"ClusterNetworkPolicy","metadata":{"name":"deny-metadata"},
  "spec":{"tier":"Admin","priority":5,"subject":{"namespaces":{}},
          "egress":[{"name":"deny-imds","action":"Deny","to":[{"networks":["169.254.169.254/32"]}]}]}}]}"#;

fn agent_config(
    cp: &ControlPlane,
    dir: &std::path::Path,
    node: &str,
    pins: &PinRoot,
) -> palisade_agent::run::AgentConfig {
    let kc = cp
        .service_account_kubeconfig("kube-system", "palisade-agent")
        .expect("agent token");
    let d = agent_dir(dir, node);
    palisade_agent::run::AgentConfig {
        source: palisade_agent::run::SourceConfig::Kubernetes {
            kubeconfig: Some(kc.path().to_path_buf()),
            context: None,
        },
        state_dir: d.clone(),
        socket: d.join("agent.sock"),
        read_only_socket: palisade_agent::api::read_only_socket_beside(&d.join("agent.sock")),
        read_only_group: 0,
        pin_root: pins.0.clone(),
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
    }
}

fn spec_of(cp: &ControlPlane, what: &[&str]) -> Result<serde_json::Value, String> {
    Ok(get_json(cp, what)?["spec"].clone())
}

fn rv_of(cp: &ControlPlane, what: &[&str]) -> String {
    get_json(cp, what).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

fn condition(v: &serde_json::Value, ty: &str) -> Option<serde_json::Value> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .cloned()
}

#[test]
fn policies_and_pods_say_where_they_are_in_force_as_of_which_resource_version() {
    let Some(cp) = start("controller in force", &[Need::Root, Need::Bpffs]) else {
        return;
    };
    palisade_kube_lab::crds::install(&cp).expect("network-policy-api CRDs");
    apply(&cp, NODES_AND_PODS);
    let dir = tempfile::tempdir().unwrap();
    let pins = [PinRoot::new("n1"), PinRoot::new("n2")];
    let agents = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (node, pin) in ["n1", "n2"].iter().zip(&pins) {
        let config = agent_config(&cp, dir.path(), node, pin);
        agents.spawn(async move {
            if let Err(e) = palisade_agent::run::run(config).await {
                panic!("agent stopped: {e:#}");
            }
        });
    }
    let _controller = Replica::start(
        &controller_identity(&cp),
        "controller-0",
        Duration::from_secs(15),
        Duration::from_secs(2),
    );

    // 1. A NetworkPolicy: in force on the one node that has a pod it selects, as of
    //    its resourceVersion; both nodes list it with that version.
    apply(&cp, WEB);
    let rv = rv_of(&cp, &["networkpolicy", "-n", "team-a", "web"]);
    let web = eventually(
        Duration::from_secs(90),
        "NetworkPolicyStatus team-a/web in force",
        || {
            let s = spec_of(
                &cp,
                &["networkpolicystatuses.palisade.io", "-n", "team-a", "web"],
            )?;
            (s["resourceVersion"] == rv.as_str() && s["reason"] == "InForce")
                .then_some(s.clone())
                .ok_or(s.to_string())
        },
    );
    assert_eq!(web["inForce"], "1/1", "only n1 has a web pod: {web}");
    assert_eq!(web["nodesSelected"], 1);
    assert!(
        web["message"]
            .as_str()
            .unwrap()
            .contains(&format!("as of resourceVersion {rv}")),
        "{web}"
    );
    for node in ["n1", "n2"] {
        // n2 has no selected pod, so the answer above did not wait for it.
        let n = eventually(
            Duration::from_secs(30),
            &format!("{node}'s report of the policy"),
            || {
                let n = spec_of(&cp, &["nodepolicystatuses.palisade.io", node])?;
                (n["policies"]["NetworkPolicy/team-a/web"]["resourceVersion"] == rv.as_str())
                    .then_some(n.clone())
                    .ok_or(n.to_string())
            },
        );
        assert_eq!(n["nodeName"], node);
        assert!(n.get("lastError").is_none(), "{node}: {n}");
    }

    // 2. The pod that asked for it (readiness gate) gets its condition.
    eventually(
        Duration::from_secs(30),
        "web-1's palisade.io/policy-enforced condition",
        || {
            let p = get_json(&cp, &["pod", "-n", "team-a", "web-1"])?;
            let c = condition(&p, "palisade.io/policy-enforced").ok_or(p["status"].to_string())?;
            (c["status"] == "True").then_some(()).ok_or(c.to_string())
        },
    );
    let db = get_json(&cp, &["pod", "-n", "team-a", "db-1"]).unwrap();
    assert!(
        condition(&db, "palisade.io/policy-enforced").is_none(),
        "db-1 did not ask for the gate"
    );

    // 3. An object the API server accepts and Palisade rejects: the error, by node and
    //    field, in its condition; an Event on it (the agents'); the other policies stay in force.
    apply(&cp, BAD);
    let anp = "adminnetworkpolicies.policy.networking.k8s.io";
    let c = eventually(
        Duration::from_secs(60),
        "bad-range's Invalid condition",
        || {
            let o = get_json(&cp, &[anp, "bad-range"])?;
            let c = condition(&o, "palisade.io/InForce").ok_or(o["status"].to_string())?;
            (c["reason"] == "Invalid"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("rejected by 2 node(s)")))
            .then_some(c.clone())
            .ok_or(c.to_string())
        },
    );
    assert_eq!(c["status"], "False");
    assert!(
        c["message"].as_str().unwrap().contains("spec.ingress[0]"),
        "the field is named: {c}"
    );
    let event = eventually(
        Duration::from_secs(30),
        "a PolicyRejected Event on bad-range",
        || {
            let list = get_json(&cp, &["events.events.k8s.io", "-A"])?;
            list["items"]
                .as_array()
                .and_then(|items| {
                    items
                        .iter()
                        .find(|e| {
                            e["reason"] == "PolicyRejected" && e["regarding"]["name"] == "bad-range"
                        })
                        .cloned()
                })
                .ok_or(list.to_string())
        },
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "AdminNetworkPolicy");
    // Written by an agent that rejected it (palisade_agent::kube_events), once.
    assert_eq!(event["reportingController"], "palisade.io/agent", "{event}");
    assert!(
        event["note"]
            .as_str()
            .is_some_and(|n| n.contains("spec.ingress[0]")),
        "{event}"
    );
    let web = spec_of(
        &cp,
        &["networkpolicystatuses.palisade.io", "-n", "team-a", "web"],
    )
    .unwrap();
    assert_eq!(
        web["reason"], "InForce",
        "one bad object disables no other: {web}"
    );

    // 4. Admin policies: their own status.conditions.
    // The resourceVersions as created: the controller's own status writes change them
    // later, and the answer stays about the version first seen.
    let created: serde_json::Value = serde_json::from_str(
        &cp.kubectl(cp.admin(), &["apply", "-f", "-", "-o", "json"], Some(ADMIN))
            .expect("admin policies apply"),
    )
    .unwrap();
    let created_rv = |name: &str| {
        created["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (what, name, expected) in [
        (
            "adminnetworkpolicies.policy.networking.k8s.io",
            "team-a-deny",
            "in force on 2 of 2 nodes",
        ),
        (
            "clusternetworkpolicies.policy.networking.k8s.io",
            "deny-metadata",
            "in force on 2 of 2 nodes",
        ),
    ] {
        let rv = created_rv(name);
        eventually(
            Duration::from_secs(60),
            &format!("{name}'s palisade.io/InForce condition"),
            || {
                let o = get_json(&cp, &[what, name])?;
                let c = condition(&o, "palisade.io/InForce").ok_or(o["status"].to_string())?;
                let m = c["message"].as_str().unwrap_or_default();
                (c["status"] == "True"
                    && m.starts_with(expected)
                    && m.contains(&format!("resourceVersion {rv}")))
                .then_some(())
                .ok_or(c.to_string())
            },
        );
    }

    // 5. `palisade status` reads it back: where, since when, why not.
    let report = agents.block_on(async {
        let admin = client(cp.admin()).await;
        palisade_controller::report::fetch(&admin, Some("team-a"), None)
            .await
            .unwrap()
    });
    let text = palisade_controller::report::render(&report);
    let line = |p: &str| {
        report
            .policies
            .iter()
            .find(|l| l.policy == p)
            .unwrap_or_else(|| panic!("{p} missing:\n{text}"))
            .clone()
    };
    assert_eq!(
        (
            line("NetworkPolicy team-a/web").in_force.as_str(),
            line("NetworkPolicy team-a/web").reason.as_str()
        ),
        ("1/1", "InForce"),
        "{text}"
    );
    assert_eq!(
        line("AdminNetworkPolicy bad-range").reason,
        "Invalid",
        "{text}"
    );
    assert!(
        line("AdminNetworkPolicy bad-range")
            .message
            .contains("spec.ingress[0]"),
        "why: {text}"
    );
    assert_eq!(
        line("AdminNetworkPolicy team-a-deny").in_force,
        "2/2",
        "{text}"
    );
    assert_eq!(
        line("ClusterNetworkPolicy deny-metadata").reason,
        "InForce",
        "{text}"
    );
    assert_eq!(report.nodes.len(), 2, "{text}");
    eprintln!("{text}");
    // Wait for the agents' reconciler threads to end before the pin roots are removed
    // (declared earlier, dropped after this): `shutdown_background` returned at once,
    // a pass still running then re-created pins under a root just removed, and
    // /sys/fs/bpf/palisade-test-ctrl-<pid>-n1/n2 stayed behind.
    let stopping = std::time::Instant::now();
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

/// How long the agents get to finish their pass and end once the test is done.
const AGENTS_STOP: Duration = Duration::from_secs(30);
