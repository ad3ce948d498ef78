//! The controller manager and scheduler run as themselves: a Deployment becomes a
//! ReplicaSet and a Pod, and the scheduler judges the Pod (no node exists, so it
//! stays Pending as Unschedulable).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::start;

/// How long controllers get to react to an object, in seconds.
const REACT: Duration = Duration::from_secs(90);

#[test]
fn a_deployment_gets_a_pod_that_the_scheduler_marks_unschedulable_without_nodes() {
    let Some(mut cp) = start(false) else { return };
    cp.start_controllers().expect("controllers start");
    let pids = cp.controller_pids();
    assert_eq!(pids.len(), 2);

    let ns = "palisade-deploy";
    cp.kubectl(cp.admin(), &["create", "namespace", ns], None)
        .expect("namespace");
    let deploy = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "namespace": ns },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "palisade.invalid/web" }] }
            }
        }
    });
    // Admission refuses pods until the namespace's default ServiceAccount exists;
    // the Deployment itself is accepted at once and retried by its controller.
    cp.kubectl(cp.admin(), &["apply", "-f", "-"], Some(&deploy.to_string()))
        .expect("deployment");

    let deadline = Instant::now() + REACT;
    let (owner, scheduled) = loop {
        let json = cp
            .kubectl(
                cp.admin(),
                &["get", "pods", "-n", ns, "-l", "app=web", "-o", "json"],
                None,
            )
            .expect("list pods");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        let pod = v["items"].as_array().and_then(|a| a.first()).cloned();
        let judged = pod.as_ref().and_then(|p| {
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")
                .cloned()
        });
        if let (Some(p), Some(c)) = (&pod, judged) {
            break (p["metadata"]["ownerReferences"][0]["kind"].clone(), c);
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled-or-not pod within {REACT:?}: {v}\ncontroller-manager log: {}",
            std::fs::read_to_string(cp.dir().join("controller-manager.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        owner, "ReplicaSet",
        "the Deployment controller made the pod's owner"
    );
    assert_eq!(scheduled["status"], "False", "{scheduled}");
    assert_eq!(scheduled["reason"], "Unschedulable", "{scheduled}");

    for &pid in &pids {
        let listening = crate::listening_addresses(pid);
        assert!(listening.is_empty(), "{pid} listens: {listening:?}");
    }
    drop(cp);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} left behind"
        );
    }
}
