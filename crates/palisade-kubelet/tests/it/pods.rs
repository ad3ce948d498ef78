//! Registration, heartbeats, pods and Deployments made and deleted.

use std::collections::BTreeSet;
use std::net::IpAddr;

use palisade_lab::netns::NetNs;

use crate::*;

#[test]
fn a_node_registers_stays_ready_and_runs_scheduled_pods_and_deployments_until_deleted() {
    let Some(cp) = cluster() else { return };
    let node = TestNode::start(&cp, "a", "10.250.1.1", "10.244.1.0/24");

    // Registered with addresses, CIDR and capacity, Ready.
    let n = wait_for(
        "the Node Ready",
        || node.log(),
        || {
            let n = get(&cp, &["node", &node.name])?;
            condition(&n, "Ready")
                .is_some_and(|c| c["status"] == "True")
                .then_some(n)
        },
    );
    assert_eq!(n["spec"]["podCIDR"], "10.244.1.0/24", "{n}");
    let addrs = n["status"]["addresses"].as_array().unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a["type"] == "InternalIP" && a["address"] == "10.250.1.1"),
        "{addrs:?}"
    );
    assert_eq!(n["status"]["allocatable"]["pods"], "110");
    let lease_of = || {
        get(&cp, &["lease", &node.name, "-n", "kube-node-lease"])
            .and_then(|l| l["spec"]["renewTime"].as_str().map(str::to_string))
    };
    let first_renewal = wait_for("the node Lease", || node.log(), lease_of);

    // A Pod, scheduled by kube-scheduler, runs with an address of the node's CIDR and
    // its server answers from the node namespace.
    let ns = "plk-pods";
    namespace(&cp, ns);
    apply(&cp, pod_manifest(ns, "web", &[(80, "TCP")]));
    let pod = wait_ready(&cp, &node, ns, "web");
    assert_eq!(pod["spec"]["nodeName"], node.name.as_str());
    let ip: IpAddr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
    assert!(node.cidr.contains(&ip), "{ip} in {}", node.cidr);
    assert_eq!(pod["status"]["hostIP"], "10.250.1.1");
    for c in ["Initialized", "ContainersReady", "PodScheduled"] {
        assert_eq!(condition(&pod, c).unwrap()["status"], "True", "{c}: {pod}");
    }
    assert_eq!(
        pod["status"]["containerStatuses"][0]["ready"], true,
        "{pod}"
    );
    assert_eq!(node.tcp_from_node(ip, 80).as_deref(), Ok("plk-pods/web"));

    // A Deployment's replicas (ReplicaSet controller + scheduler) run with distinct
    // addresses.
    apply(
        &cp,
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": ns},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}},
                "template": {"metadata": {"labels": {"app": "api"}},
                    "spec": {"containers": [{"name": "api", "image": "palisade.invalid/api",
                        "ports": [{"containerPort": 8080}]}]}}}
        }),
    );
    let replicas = wait_for(
        "3 Ready replicas",
        || node.log(),
        || {
            let list = get(&cp, &["pods", "-n", ns, "-l", "app=api"])?;
            let items = list["items"].as_array()?.clone();
            let ready = items
                .iter()
                .filter(|p| condition(p, "Ready").is_some_and(|c| c["status"] == "True"))
                .count();
            (items.len() == 3 && ready == 3).then_some(items)
        },
    );
    let ips: BTreeSet<IpAddr> = replicas
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ips.len(), 3, "distinct addresses: {ips:?}");
    // Not a timed assertion: the figures, for the record (`--nocapture`).
    for p in &replicas {
        let r = node.record(p["metadata"]["uid"].as_str().unwrap()).unwrap();
        let t = &r.timeline;
        let since = |x: Option<u128>| {
            x.zip(t.network_ready_ms)
                .map(|(x, n)| x as i128 - n as i128)
        };
        eprintln!(
            "timeline {}: CNI ADD done -> servers ready {:?} ms, -> Ready reported {:?} ms",
            r.key(),
            since(t.servers_ready_ms),
            since(t.ready_reported_ms)
        );
    }
    for ip in &ips {
        assert!(node.cidr.contains(ip), "{ip} in {}", node.cidr);
        assert!(node
            .tcp_from_node(*ip, 8080)
            .unwrap()
            .starts_with("plk-pods/api-"));
    }

    // Deleting a pod: its processes and namespace go, then the kubelet deletes the
    // object (grace period 0).
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let rec = node.record(&uid).expect("a record of the running pod");
    let server = rec.server.clone().expect("a server");
    let netns = rec.netns.clone().expect("a namespace");
    assert!(server.is_alive() && NetNs::open(&netns).exists());
    cp.kubectl(
        cp.admin(),
        &["delete", "pod", "web", "-n", ns, "--wait=false"],
        None,
    )
    .expect("delete");
    wait_for(
        "the pod object gone",
        || node.log(),
        || get(&cp, &["pod", "web", "-n", ns]).is_none().then_some(()),
    );
    assert!(!server.is_alive(), "server stopped");
    assert!(!NetNs::open(&netns).exists(), "namespace deleted");
    assert!(node.record(&uid).is_none(), "record removed");
    assert!(
        node.tcp_from_node(ip, 80).is_err(),
        "nothing answers at {ip}"
    );

    // Scaling down: the Deployment controller deletes a replica, the kubelet tears it down.
    cp.kubectl(
        cp.admin(),
        &["scale", "deployment", "api", "-n", ns, "--replicas=1"],
        None,
    )
    .expect("scale");
    wait_for(
        "1 replica left, 2 records removed",
        || node.log(),
        || {
            let list = get(&cp, &["pods", "-n", ns, "-l", "app=api"])?;
            let n = list["items"].as_array()?.len();
            let records = std::fs::read_dir(node.state_dir.join("pods")).ok()?.count();
            (n == 1 && records == 1).then_some(())
        },
    );

    // The node stayed Ready and untainted across more than one lease period.
    wait_for(
        "a lease renewal",
        || node.log(),
        || lease_of().filter(|r| *r != first_renewal),
    );
    let n = get(&cp, &["node", &node.name]).unwrap();
    assert_eq!(condition(&n, "Ready").unwrap()["status"], "True", "{n}");
    assert!(
        n["spec"]["taints"].is_null(),
        "no taints: {}",
        n["spec"]["taints"]
    );
}
