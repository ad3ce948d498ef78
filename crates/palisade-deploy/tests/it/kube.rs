//! The chart against the real API server (palisade-kube-lab's etcd + kube-apiserver):
//! every object is accepted by a server-side dry run, and RBAC grants the components
//! exactly what they use, checked both ways with `kubectl auth can-i --as`.

use std::process::Command;
use std::time::{Duration, Instant};

use palisade_deploy::{documents, render, NAMESPACE};
use palisade_kube_lab::{Binaries, ControlPlane};
use palisade_testkit::{decide, Context, Decision};

/// How long RBAC gets to see new bindings (the authorizer reads an informer cache).
const RBAC_DEADLINE: Duration = Duration::from_secs(30);

/// A control plane, or `None` (after `SKIPPED`) only for a developer without the
/// binaries (or `go`, when `needs_go`: the CRDs come from its module cache); as root
/// or in CI a missing one fails the test.
fn start_with(needs_go: bool) -> Option<ControlPlane> {
    let mut missing: Vec<String> = Binaries::locate()
        .err()
        .map(|e| e.to_string())
        .into_iter()
        .collect();
    let go = Command::new(palisade_kube_lab::crds::go_program())
        .arg("version")
        .output();
    if needs_go && go.is_err() {
        missing.push("needs `go` to read the network-policy-api CRDs from the module cache".into());
    }
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    match decide(&name, &missing, Context::current()) {
        Decision::Run => Some(ControlPlane::start().expect("control plane starts")),
        Decision::Skip(msg) => {
            eprintln!("{msg}");
            None
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

/// [`start_with`] for a test that needs no CRDs from the Go module cache.
fn start() -> Option<ControlPlane> {
    start_with(false)
}

/// Applies the Namespace for real (a dry run of namespaced objects needs it), then
/// `objects` as given with `extra` kubectl arguments.
fn apply(cp: &ControlPlane, yaml: &str, extra: &[&str]) -> String {
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&ns.to_string()))
        .expect("namespace");
    let mut args = vec!["apply", "-f", "-"];
    args.extend_from_slice(extra);
    cp.kubectl(cp.admin(), &args, Some(yaml))
        .unwrap_or_else(|e| panic!("kubectl apply {extra:?}: {e}"))
}

#[test]
fn every_object_of_the_chart_passes_a_server_side_dry_run() {
    let Some(cp) = start() else { return };
    let yaml = render(&[]).expect("helm template");
    let objects = documents(&yaml).unwrap();
    let out = apply(&cp, &yaml, &["--dry-run=server"]);
    // kubectl prints one line per object it sent: all of them were accepted.
    let lines = out
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert_eq!(lines, objects.len(), "{out}");
    // Nothing was created: only the dry run's Namespace exists.
    let sa = cp
        .kubectl_output(
            cp.admin(),
            &["get", "serviceaccount", "palisade-agent", "-n", NAMESPACE],
            None,
        )
        .unwrap();
    assert!(!sa.status.success(), "a dry run created the ServiceAccount");
}

/// `kubectl auth can-i ARGS --as=system:serviceaccount:palisade-system:WHO`.
fn can_i(cp: &ControlPlane, who: &str, args: &[&str]) -> bool {
    let who = format!("--as=system:serviceaccount:{NAMESPACE}:{who}");
    let mut full = vec!["auth", "can-i", &who];
    full.extend_from_slice(args);
    let out = cp
        .kubectl_output(cp.admin(), &full, None)
        .expect("kubectl runs");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl {full:?}: {other:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// What the agent does (docs/install.md, "RBAC"): every one must be granted.
const AGENT_USES: &[&[&str]] = &[
    &["list", "namespaces"],
    &["watch", "namespaces"],
    &["list", "pods", "-A"],
    &["watch", "pods", "-A"],
    &["get", "pods", "-n", "default"],
    &["list", "nodes"],
    &["watch", "nodes"],
    &["list", "services", "-A"],
    &["watch", "services", "-A"],
    &["list", "serviceaccounts", "-A"],
    &["watch", "serviceaccounts", "-A"],
    &["list", "endpointslices.discovery.k8s.io", "-A"],
    &["watch", "endpointslices.discovery.k8s.io", "-A"],
    &["list", "networkpolicies.networking.k8s.io", "-A"],
    &["watch", "networkpolicies.networking.k8s.io", "-A"],
    &["list", "clusternetworkpolicies.policy.networking.k8s.io"],
    &["watch", "clusternetworkpolicies.policy.networking.k8s.io"],
    &["list", "adminnetworkpolicies.policy.networking.k8s.io"],
    &["watch", "adminnetworkpolicies.policy.networking.k8s.io"],
    &[
        "list",
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
    ],
    &[
        "watch",
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
    ],
    &["list", "networkpolicies.projectcalico.org", "-A"],
    &["watch", "networkpolicies.projectcalico.org", "-A"],
    &["list", "globalnetworkpolicies.projectcalico.org"],
    &["watch", "globalnetworkpolicies.projectcalico.org"],
    &["list", "networksets.projectcalico.org", "-A"],
    &["watch", "networksets.projectcalico.org", "-A"],
    &["list", "globalnetworksets.projectcalico.org"],
    &["watch", "globalnetworksets.projectcalico.org"],
    &["list", "networkpolicies.crd.projectcalico.org", "-A"],
    &["watch", "networkpolicies.crd.projectcalico.org", "-A"],
    &["list", "globalnetworkpolicies.crd.projectcalico.org"],
    &["watch", "globalnetworkpolicies.crd.projectcalico.org"],
    &["list", "networksets.crd.projectcalico.org", "-A"],
    &["watch", "networksets.crd.projectcalico.org", "-A"],
    &["list", "globalnetworksets.crd.projectcalico.org"],
    &["watch", "globalnetworksets.crd.projectcalico.org"],
    &["create", "events.events.k8s.io", "-n", "default"],
    &["create", "nodepolicystatuses.palisade.io"],
    &["patch", "nodepolicystatuses.palisade.io/node-1"],
];

/// What the agent must not do.
const AGENT_REFUSED: &[&[&str]] = &[
    &["get", "secrets", "-n", NAMESPACE],
    &["list", "secrets", "-A"],
    &["watch", "secrets", "-A"],
    &["get", "configmaps", "-n", "kube-system"],
    &["create", "pods", "-n", "default"],
    &["update", "pods", "-n", "default"],
    &["patch", "pods", "-n", "default"],
    &["delete", "pods", "-n", "default"],
    &["patch", "pods/status", "-n", "default"],
    &["create", "pods/exec", "-n", "default"],
    &["update", "nodes"],
    &["patch", "nodes/status"],
    &["get", "nodes/proxy"],
    &[
        "create",
        "networkpolicies.networking.k8s.io",
        "-n",
        "default",
    ],
    &[
        "delete",
        "networkpolicies.networking.k8s.io",
        "-n",
        "default",
    ],
    &[
        "create",
        "networkpolicies.projectcalico.org",
        "-n",
        "default",
    ],
    &["patch", "globalnetworkpolicies.projectcalico.org"],
    &["delete", "networksets.projectcalico.org", "-n", "default"],
    &[
        "update",
        "networkpolicies.crd.projectcalico.org",
        "-n",
        "default",
    ],
    &["get", "networkpolicies.projectcalico.org", "-n", "default"],
    &["delete", "nodepolicystatuses.palisade.io/node-1"],
    &["list", "nodepolicystatuses.palisade.io"],
    &["patch", "events.events.k8s.io", "-n", "default"],
    &["create", "serviceaccounts/token", "-n", NAMESPACE],
    &["create", "serviceaccounts", "-n", "default"],
    &["patch", "serviceaccounts", "-n", "default"],
    &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
    &["escalate", "clusterroles.rbac.authorization.k8s.io"],
    &["impersonate", "users"],
    &["*", "*"],
    &["get", "leases.coordination.k8s.io", "-n", NAMESPACE],
];

/// What the controller does (docs/architecture.md's table, docs/install.md).
const CONTROLLER_USES: &[&[&str]] = &[
    &["list", "namespaces"],
    &["watch", "pods", "-A"],
    &["list", "pods", "-A"],
    &["list", "nodes"],
    &["list", "services", "-A"],
    &["watch", "serviceaccounts", "-A"],
    &["watch", "endpointslices.discovery.k8s.io", "-A"],
    &["list", "networkpolicies.networking.k8s.io", "-A"],
    &["watch", "clusternetworkpolicies.policy.networking.k8s.io"],
    &["list", "adminnetworkpolicies.policy.networking.k8s.io"],
    &[
        "watch",
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
    ],
    &["list", "networkpolicies.projectcalico.org", "-A"],
    &["watch", "globalnetworkpolicies.projectcalico.org"],
    &["list", "globalnetworksets.crd.projectcalico.org"],
    &["watch", "networksets.crd.projectcalico.org", "-A"],
    &["list", "nodepolicystatuses.palisade.io"],
    &["watch", "nodepolicystatuses.palisade.io"],
    &[
        "create",
        "networkpolicystatuses.palisade.io",
        "-n",
        "default",
    ],
    &[
        "patch",
        "networkpolicystatuses.palisade.io",
        "-n",
        "default",
    ],
    &[
        "patch",
        "clusternetworkpolicies.policy.networking.k8s.io",
        "--subresource=status",
    ],
    &[
        "patch",
        "adminnetworkpolicies.policy.networking.k8s.io",
        "--subresource=status",
    ],
    &[
        "patch",
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
        "--subresource=status",
    ],
    &["patch", "pods", "--subresource=status", "-n", "default"],
    &["create", "leases.coordination.k8s.io", "-n", NAMESPACE],
    &[
        "get",
        "leases.coordination.k8s.io/palisade-controller",
        "-n",
        NAMESPACE,
    ],
    &[
        "update",
        "leases.coordination.k8s.io/palisade-controller",
        "-n",
        NAMESPACE,
    ],
];

/// What the controller must not do.
const CONTROLLER_REFUSED: &[&[&str]] = &[
    &["get", "secrets", "-n", NAMESPACE],
    &["list", "secrets", "-A"],
    &["create", "pods", "-n", "default"],
    &["update", "pods", "-n", "default"],
    &["patch", "pods", "-n", "default"],
    &["delete", "pods", "-n", "default"],
    &["create", "pods/eviction", "-n", "default"],
    &["patch", "clusternetworkpolicies.policy.networking.k8s.io"],
    &[
        "update",
        "networkpolicies.networking.k8s.io",
        "-n",
        "default",
    ],
    &["create", "globalnetworkpolicies.projectcalico.org"],
    &[
        "delete",
        "networkpolicies.crd.projectcalico.org",
        "-n",
        "default",
    ],
    &["create", "nodepolicystatuses.palisade.io"],
    &["create", "events.events.k8s.io", "-n", "default"],
    &["patch", "nodepolicystatuses.palisade.io/node-1"],
    &[
        "delete",
        "networkpolicystatuses.palisade.io",
        "-n",
        "default",
    ],
    &[
        "update",
        "leases.coordination.k8s.io/other",
        "-n",
        NAMESPACE,
    ],
    &[
        "get",
        "leases.coordination.k8s.io/palisade-controller",
        "-n",
        "kube-system",
    ],
    &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
    &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
    &["bind", "clusterroles.rbac.authorization.k8s.io"],
    &["impersonate", "serviceaccounts", "-A"],
    &["*", "*"],
];

#[test]
fn rbac_grants_the_agent_and_controller_what_they_use_and_refuses_secrets_pod_writes_and_admin() {
    let Some(cp) = start_with(true) else { return };
    // The admin policy CRDs, as users install them: `kubectl auth can-i` names a
    // resource by discovery, so their rules are checked only once they are served.
    palisade_kube_lab::crds::install(&cp).expect("network-policy-api CRDs");
    // Calico's storage group, as where Calico is installed (stand-in CRDs with
    // Palisade's schemas: the group must be served for `can-i` to name it).
    cp.kubectl(
        cp.admin(),
        &["apply", "-f", "-"],
        Some(&palisade_crds::calico::storage_stand_in_yaml()),
    )
    .expect("crd.projectcalico.org stand-in CRDs");
    apply(&cp, &render(&[]).expect("helm template"), &[]);
    // The authorizer sees new bindings through an informer: wait for the first grant.
    let deadline = Instant::now() + RBAC_DEADLINE;
    while !(can_i(&cp, "palisade-agent", AGENT_USES[0])
        && can_i(&cp, "palisade-controller", CONTROLLER_USES[0]))
    {
        assert!(
            Instant::now() < deadline,
            "RBAC did not see the chart's bindings in {RBAC_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut wrong = Vec::new();
    for (who, uses, refused) in [
        ("palisade-agent", AGENT_USES, AGENT_REFUSED),
        ("palisade-controller", CONTROLLER_USES, CONTROLLER_REFUSED),
    ] {
        for args in uses {
            if !can_i(&cp, who, args) {
                wrong.push(format!("{who} is refused {args:?}, which it uses"));
            }
        }
        for args in refused {
            if can_i(&cp, who, args) {
                wrong.push(format!("{who} is granted {args:?}"));
            }
        }
    }
    // Another ServiceAccount of the namespace gets nothing of it.
    if can_i(&cp, "default", &["list", "pods", "-A"]) {
        wrong.push("the namespace's default ServiceAccount lists pods".into());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A NodePolicyStatus named `node`, as the agent applies it.
fn node_status(node: &str) -> String {
    serde_json::json!({
        "apiVersion": "palisade.io/v1alpha1", "kind": "NodePolicyStatus",
        "metadata": {"name": node},
        "spec": {"nodeName": node, "generation": 1}
    })
    .to_string()
}

#[test]
fn admission_lets_an_agent_write_only_its_own_nodes_status() {
    let Some(cp) = start() else { return };
    apply(&cp, &render(&[]).expect("helm template"), &[]);
    let admin = cp.admin();
    cp.kubectl(
        admin,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/nodepolicystatuses.palisade.io",
        ],
        None,
    )
    .expect("CRD established");
    // A pod of the agent's ServiceAccount on node-1: a token bound to it carries the
    // node's name, as the kubelet-projected token of a DaemonSet pod does.
    let objects = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-x", "namespace": NAMESPACE},
         "spec": {"nodeName": "node-1", "serviceAccountName": "palisade-agent",
                  "containers": [{"name": "a", "image": "palisade"}]}}
    ]});
    cp.kubectl(admin, &["create", "-f", "-"], Some(&objects.to_string()))
        .expect("node and pod");
    let token = |bound: bool| {
        let mut args = vec!["create", "token", "palisade-agent", "-n", NAMESPACE];
        if bound {
            args.extend(["--bound-object-kind=Pod", "--bound-object-name=agent-x"]);
        }
        let t = cp.kubectl(admin, &args, None).expect("token");
        cp.token_kubeconfig(
            &format!("system:serviceaccount:{NAMESPACE}:palisade-agent"),
            t.trim(),
        )
        .unwrap()
    };
    let on_node = token(true);
    let unbound = token(false);
    let write = |who, node: &str| {
        cp.kubectl_output(
            who,
            &[
                "apply",
                "--server-side",
                "--field-manager=palisade-agent",
                "-f",
                "-",
            ],
            Some(&node_status(node)),
        )
        .expect("kubectl runs")
    };
    // The policy takes effect once admission has loaded it: until another node's write
    // is refused, undo it and try again.
    let deadline = Instant::now() + RBAC_DEADLINE;
    let refused = loop {
        let out = write(&on_node, "node-2");
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        cp.kubectl(admin, &["delete", "nodepolicystatus", "node-2"], None)
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "the admission policy never refused another node's status"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        refused.contains("an agent writes only the NodePolicyStatus named after its own node"),
        "{refused}"
    );
    let own = write(&on_node, "node-1");
    assert!(
        own.status.success(),
        "its own node: {}",
        String::from_utf8_lossy(&own.stderr)
    );
    let out = write(&unbound, "node-1");
    assert!(
        !out.status.success(),
        "a token that names no node was let through"
    );
    // Only its own node's object was written.
    let names = cp
        .kubectl(admin, &["get", "nodepolicystatuses", "-o", "name"], None)
        .unwrap();
    assert_eq!(names.trim(), "nodepolicystatus.palisade.io/node-1");
}
