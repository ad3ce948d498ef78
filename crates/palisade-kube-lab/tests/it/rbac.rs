//! Identities: Palisade's components authenticate as themselves and get only what
//! RBAC (or the Node authorizer) grants them.

use crate::{await_can_i, can_i, start};

const AGENT: &str = "system:serviceaccount:kube-system:palisade-agent";

#[test]
fn palisade_agent_service_account_is_refused_pods_until_an_rbac_grant() {
    let Some(cp) = start(false) else { return };
    cp.kubectl(cp.admin(), &["create", "namespace", "palisade-rbac"], None)
        .expect("admin creates a namespace");

    let agent = cp
        .service_account_kubeconfig("kube-system", "palisade-agent")
        .expect("token for the agent");
    assert_eq!(agent.user(), AGENT);
    let whoami = cp
        .kubectl(
            &agent,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
            None,
        )
        .expect("whoami");
    assert_eq!(whoami.trim(), AGENT, "the token authenticates as the agent");

    assert!(!can_i(&cp, &agent, &["list", "pods", "--all-namespaces"]));
    let refused = cp
        .kubectl_output(&agent, &["get", "pods", "-n", "palisade-rbac"], None)
        .expect("kubectl runs");
    assert!(
        !refused.status.success(),
        "agent listed pods before any grant"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("forbidden"), "refusal is RBAC's: {stderr}");

    let grant = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            { "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
              "metadata": { "name": "palisade-agent" },
              "rules": [{ "apiGroups": [""], "resources": ["pods"],
                          "verbs": ["get", "list", "watch"] }] },
            { "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
              "metadata": { "name": "palisade-agent" },
              "roleRef": { "apiGroup": "rbac.authorization.k8s.io",
                           "kind": "ClusterRole", "name": "palisade-agent" },
              "subjects": [{ "kind": "ServiceAccount", "name": "palisade-agent",
                             "namespace": "kube-system" }] }
        ]
    });
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&grant.to_string()))
        .expect("admin grants");

    assert!(await_can_i(
        &cp,
        &agent,
        &["list", "pods", "--all-namespaces"],
        true
    ));
    cp.kubectl(&agent, &["get", "pods", "-n", "palisade-rbac"], None)
        .expect("agent lists pods after the grant");
    // Least privilege: the grant is reads of pods, nothing more.
    assert!(!can_i(
        &cp,
        &agent,
        &["create", "pods", "-n", "palisade-rbac"]
    ));
    assert!(!can_i(
        &cp,
        &agent,
        &["list", "secrets", "--all-namespaces"]
    ));
}

#[test]
fn client_certificates_authenticate_by_cn_and_o_and_the_node_authorizer_applies() {
    let Some(cp) = start(false) else { return };
    let node = cp
        .client_cert_kubeconfig("system:node:lab-node-1", Some("system:nodes"))
        .expect("node certificate");
    let info = cp
        .kubectl(&node, &["auth", "whoami", "-o", "json"], None)
        .expect("whoami");
    let v: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(
        v["status"]["userInfo"]["username"],
        "system:node:lab-node-1"
    );
    let groups = v["status"]["userInfo"]["groups"]
        .as_array()
        .expect("groups");
    assert!(groups.iter().any(|g| g == "system:nodes"), "{groups:?}");

    // The Node authorizer lets a node read its own Node object and nothing of RBAC.
    assert!(can_i(&cp, &node, &["get", "nodes/lab-node-1"]));
    assert!(!can_i(&cp, &node, &["create", "clusterrolebindings"]));
    assert!(!can_i(&cp, &node, &["delete", "namespaces"]));

    // A user with no group and no binding gets nothing.
    let nobody = cp
        .client_cert_kubeconfig("palisade-controller", None)
        .expect("user certificate");
    assert!(!can_i(&cp, &nobody, &["list", "pods", "--all-namespaces"]));
    assert!(!can_i(&cp, &nobody, &["list", "namespaces"]));
}
