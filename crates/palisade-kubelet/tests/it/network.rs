//! The sender starts the instant CNI ADD returns; static addresses; host-network pods.

use std::net::IpAddr;

use palisade_lab::netns::NetNs;
use palisade_lab::sender::arrivals;

use crate::*;

fn on_node(mut pod: serde_json::Value, node: &TestNode) -> serde_json::Value {
    pod["spec"]["nodeName"] = node.name.as_str().into();
    pod
}

#[test]
fn a_senders_packets_arrive_before_its_pod_is_ready_and_static_and_host_network_pods_run() {
    let Some(cp) = cluster() else { return };
    let node = TestNode::start(&cp, "n", "10.250.2.1", "10.244.2.0/24");
    let ns = "plk-net";
    namespace(&cp, ns);

    // Static address from the annotation.
    let mut recv = on_node(
        pod_manifest(ns, "recv", &[(7000, "UDP"), (7001, "TCP")]),
        &node,
    );
    recv["metadata"]["annotations"] = serde_json::json!({"lab.palisade.io/ips": "10.244.2.50"});
    apply(&cp, recv);
    let recv = wait_ready(&cp, &node, ns, "recv");
    assert_eq!(recv["status"]["podIP"], "10.244.2.50", "{recv}");
    let recv_rec = node
        .record(recv["metadata"]["uid"].as_str().unwrap())
        .expect("record");
    assert_eq!(recv_rec.ips, vec!["10.244.2.50".parse::<IpAddr>().unwrap()]);

    // A sender to it over UDP and TCP.
    let mut send = on_node(pod_manifest(ns, "send", &[(80, "TCP")]), &node);
    send["metadata"]["annotations"] = serde_json::json!({"lab.palisade.io/send":
        "udp://10.244.2.50:7000?every=5ms&for=60s, tcp://10.244.2.50:7001?every=20ms&for=60s"});
    apply(&cp, send);
    let send = wait_ready(&cp, &node, ns, "send");
    let send_ip: IpAddr = send["status"]["podIP"].as_str().unwrap().parse().unwrap();
    let rec = node
        .record(send["metadata"]["uid"].as_str().unwrap())
        .expect("record");
    let t = &rec.timeline;
    let (net, started, servers, reported) = (
        t.network_ready_ms.unwrap(),
        t.sender_started_ms.expect("a sender"),
        t.servers_ready_ms.unwrap(),
        t.ready_reported_ms.expect("reported"),
    );
    // Sender first (its first packets sent), then servers, then Ready.
    assert!(
        net <= started && started <= servers && servers <= reported,
        "{t:?}"
    );
    let log = node.pod_log(&recv_rec);
    let (udp, tcp) = wait_for(
        "UDP and TCP marks from plk-net/send at the receiver",
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || {
            let a: Vec<_> = arrivals(&log)
                .into_iter()
                .filter(|a| a.identity == "plk-net/send")
                .collect();
            let udp: Vec<_> = a.iter().filter(|a| a.proto == "UDP").cloned().collect();
            let tcp: Vec<_> = a.iter().filter(|a| a.proto == "TCP").cloned().collect();
            (!udp.is_empty() && !tcp.is_empty()).then_some((udp, tcp))
        },
    );
    for a in udp.iter().chain(&tcp) {
        assert_eq!(
            a.from, send_ip,
            "marks come from the sender's pod address: {a:?}"
        );
    }
    // The first mark (seq 0), sent before the servers started and before Ready (the
    // timeline above), arrived: nothing waited for anything before the first packet.
    assert_eq!(
        udp.iter().map(|a| a.seq).min(),
        Some(0),
        "the very first mark arrived"
    );
    assert_eq!(
        tcp.iter().map(|a| a.seq).min(),
        Some(0),
        "the first connection arrived"
    );
    let first = udp.iter().map(|a| a.unix_ms).min().unwrap();
    assert!(first >= net, "arrivals ({first}) follow CNI ADD ({net})");

    // A host-network pod: no namespace of its own, the node's address, served there.
    let host = on_node(
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "host", "namespace": ns, "annotations": {
                "lab.palisade.io/send": "udp://10.244.2.50:7000?every=20ms&for=30s"}},
            "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "palisade.invalid/lab",
                "ports": [{"containerPort": 8081}]}]}
        }),
        &node,
    );
    apply(&cp, host);
    let host = wait_ready(&cp, &node, ns, "host");
    assert_eq!(host["status"]["podIP"], "10.250.2.1", "{host}");
    let host_rec = node
        .record(host["metadata"]["uid"].as_str().unwrap())
        .expect("record");
    assert_eq!(host_rec.netns, None);
    assert_eq!(
        node.tcp_from_node(node.ip, 8081).as_deref(),
        Ok("plk-net/host")
    );
    // Its sender runs in the node namespace and sends from the node's address (the
    // kernel alone would pick the ptp gateway address there).
    let from_host = wait_for(
        "marks from plk-net/host at the receiver",
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || {
            arrivals(&log)
                .into_iter()
                .find(|a| a.identity == "plk-net/host")
        },
    );
    assert_eq!(from_host.from, node.ip, "{from_host:?}");
    cp.kubectl(
        cp.admin(),
        &["delete", "pod", "host", "-n", ns, "--wait=false"],
        None,
    )
    .expect("delete");
    wait_for(
        "the host-network pod gone",
        || node.log(),
        || get(&cp, &["pod", "host", "-n", ns]).is_none().then_some(()),
    );
    assert!(!host_rec.server.unwrap().is_alive(), "its server stopped");
    assert!(
        NetNs::open(&node.netns).exists(),
        "the node namespace stays"
    );
}
