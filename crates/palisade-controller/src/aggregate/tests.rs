use super::*;
use palisade_crds::{ObjectError, PolicyVersion};

fn cluster() -> Cluster {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: a, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: a, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: a, labels: {app: db}}
spec: {nodeName: n3, containers: [{name: c, image: i}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: a}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all, namespace: a}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;
    let loaded = palisade_policy::manifest::load(&[("t.yaml".to_string(), text.to_string())]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.cluster
}

fn np(name: &str, rv: &str) -> Current {
    Current {
        policy: PolicyRef {
            kind: "NetworkPolicy".into(),
            namespace: Some("a".into()),
            name: name.into(),
        },
        uid: format!("uid-{name}"),
        resource_version: rv.into(),
        generation: 0,
    }
}

fn report(node: &str, in_force: &[&Current]) -> (String, NodePolicyStatusSpec) {
    let policies = in_force
        .iter()
        .map(|c| {
            (
                c.policy.key(),
                PolicyVersion {
                    uid: c.uid.clone(),
                    resource_version: c.resource_version.clone(),
                    generation: c.generation,
                },
            )
        })
        .collect();
    (
        node.to_string(),
        NodePolicyStatusSpec {
            node_name: node.into(),
            policies,
            ..Default::default()
        },
    )
}

#[test]
fn a_policy_counts_only_nodes_with_selected_pods_and_the_current_version() {
    let c = cluster();
    let selected = selected_nodes(&c);
    let web = np("web", "20");
    let old_web = np("web", "19");
    assert_eq!(
        selected["NetworkPolicy/a/web"],
        BTreeSet::from(["n1".to_string(), "n2".to_string()]),
        "n3 has no web pod"
    );
    let nodes = BTreeMap::from([
        report("n1", &[&web]),
        report("n2", &[&old_web]),
        report("n3", &[&web]),
    ]);
    let agg = policy(&web, selected.get("NetworkPolicy/a/web"), &nodes);
    assert_eq!((agg.nodes_in_force, agg.nodes_selected), (1, 2));
    assert_eq!(agg.in_force, "1/2");
    assert_eq!(
        agg.pending_nodes,
        vec!["n2".to_string()],
        "an older version in force is pending"
    );
    assert_eq!(agg.reason, "Pending");
    assert!(
        agg.message.starts_with(
            "in force on 1 of 2 nodes that have selected pods, as of resourceVersion 20"
        ),
        "{}",
        agg.message
    );

    let nodes = BTreeMap::from([report("n1", &[&web]), report("n2", &[&web])]);
    let agg = policy(&web, selected.get("NetworkPolicy/a/web"), &nodes);
    assert_eq!(
        (agg.nodes_in_force, agg.nodes_selected, agg.reason.as_str()),
        (2, 2, "InForce")
    );

    let recreated = Current {
        uid: "another".into(),
        ..web.clone()
    };
    let agg = policy(&recreated, selected.get("NetworkPolicy/a/web"), &nodes);
    assert_eq!(
        agg.nodes_in_force, 0,
        "a policy recreated under the same name is another policy"
    );
}

#[test]
fn a_version_rejected_by_a_node_is_invalid() {
    let c = cluster();
    let selected = selected_nodes(&c);
    let web = np("web", "21");
    let old = np("web", "20");
    let (n, mut r1) = report("n1", &[&old]);
    r1.errors.push(ObjectError {
        object: web.policy.clone(),
        resource_version: "21".into(),
        generation: 0,
        file: "api:NetworkPolicy/a/web".into(),
        field: "spec.ingress[0].from[0].ipBlock.cidr".into(),
        message: "invalid CIDR".into(),
    });
    let nodes = BTreeMap::from([(n, r1), report("n2", &[&old])]);
    let agg = policy(&web, selected.get("NetworkPolicy/a/web"), &nodes);
    assert_eq!(agg.reason, "Invalid");
    assert_eq!(agg.errors.len(), 1);
    assert_eq!(agg.errors[0].node, "n1");
    assert!(agg.errors[0]
        .message
        .contains("spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR"));
    let (n, r) = report("n3", &[&web]);
    let mut nodes = nodes;
    nodes.insert(n, r);
    let stale_error = policy(
        &np("web", "22"),
        selected.get("NetworkPolicy/a/web"),
        &nodes,
    );
    assert!(
        stale_error.errors.is_empty(),
        "an error about an older version does not count"
    );
}

#[test]
fn a_pod_is_ready_once_every_policy_selecting_it_is_in_force_on_its_node() {
    let c = cluster();
    let web = np("web", "5");
    let all = np("all", "6");
    let current = BTreeMap::from([
        (web.policy.key(), web.clone()),
        (all.policy.key(), all.clone()),
    ]);
    let nodes = BTreeMap::from([report("n1", &[&web])]);
    let r = pod(&c, "a/web-1", &current, &nodes).unwrap();
    assert!(!r.ready);
    assert!(r.message.contains("NetworkPolicy a/all"), "{}", r.message);
    let nodes = BTreeMap::from([report("n1", &[&web, &all])]);
    assert!(pod(&c, "a/web-1", &current, &nodes).unwrap().ready);
    let r = pod(&c, "a/web-2", &current, &nodes).unwrap();
    assert!(
        !r.ready && r.message.contains("has not published"),
        "its node n2 has no report"
    );
    assert_eq!(pod(&c, "a/nope", &current, &nodes), None);
}

#[test]
fn a_status_write_is_not_a_new_version_when_the_api_sets_a_generation() {
    let c = cluster();
    let selected = selected_nodes(&c);
    let seen_by_node = Current {
        generation: 3,
        ..np("web", "40")
    };
    // The controller first saw generation 3 at another resourceVersion (a status write
    // happened in between): still the same version.
    let now = Current {
        generation: 3,
        ..np("web", "44")
    };
    let nodes = BTreeMap::from([
        report("n1", &[&seen_by_node]),
        report("n2", &[&seen_by_node]),
    ]);
    let agg = policy(&now, selected.get("NetworkPolicy/a/web"), &nodes);
    assert_eq!(agg.reason, "InForce", "{agg:?}");
    let newer = Current {
        generation: 4,
        ..np("web", "44")
    };
    assert_eq!(
        policy(&newer, selected.get("NetworkPolicy/a/web"), &nodes).reason,
        "Pending"
    );
}

#[test]
fn a_message_names_at_most_ten_pending_nodes_and_counts_the_rest() {
    let web = np("web", "1");
    let selected: BTreeSet<String> = (0..25).map(|i| format!("node-{i:02}")).collect();
    let agg = policy(&web, Some(&selected), &BTreeMap::new());
    assert_eq!(
        agg.pending_nodes.len(),
        25,
        "the full list stays in the object"
    );
    assert!(
        agg.message.ends_with("node-09 and 15 more"),
        "{}",
        agg.message
    );
    assert!(!agg.message.contains("node-10"), "{}", agg.message);
}
