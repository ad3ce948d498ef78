//! A restarted kubelet adopts its pods (same processes), tears down the pods no
//! longer bound to it; SIGTERM leaves pods running; --teardown removes everything.

use palisade_lab::netns::NetNs;

use crate::*;

#[test]
fn a_restarted_kubelet_adopts_its_pods_and_tears_down_orphans_and_teardown_removes_all() {
    let Some(cp) = cluster() else { return };
    let mut node = TestNode::start(&cp, "r", "10.250.4.1", "10.244.4.0/24");
    let ns = "plk-restart";
    namespace(&cp, ns);
    for name in ["keep", "gone"] {
        let mut p = pod_manifest(ns, name, &[(80, "TCP")]);
        p["spec"]["nodeName"] = node.name.as_str().into();
        apply(&cp, p);
    }
    let keep = wait_ready(&cp, &node, ns, "keep");
    let gone = wait_ready(&cp, &node, ns, "gone");
    let keep_rec = node
        .record(keep["metadata"]["uid"].as_str().unwrap())
        .unwrap();
    let gone_rec = node
        .record(gone["metadata"]["uid"].as_str().unwrap())
        .unwrap();

    // SIGTERM: the kubelet stops, its pods keep running.
    node.stop_kubelet();
    for r in [&keep_rec, &gone_rec] {
        assert!(
            r.server.as_ref().unwrap().is_alive(),
            "{} still serves",
            r.key()
        );
        assert!(NetNs::open(r.netns.as_ref().unwrap()).exists());
    }
    // While it is down, one pod is removed from the API (force, as an admin would).
    cp.kubectl(
        cp.admin(),
        &[
            "delete",
            "pod",
            "gone",
            "-n",
            ns,
            "--grace-period=0",
            "--force",
        ],
        None,
    )
    .expect("force delete");

    node.start_kubelet();
    wait_for(
        "the orphan torn down",
        || node.log(),
        || {
            (node.record(&gone_rec.uid).is_none()
                && !NetNs::open(gone_rec.netns.as_ref().unwrap()).exists())
            .then_some(())
        },
    );
    assert!(
        !gone_rec.server.as_ref().unwrap().is_alive(),
        "orphan's server stopped"
    );
    let adopted = node.record(&keep_rec.uid).expect("still recorded");
    assert_eq!(
        adopted.server, keep_rec.server,
        "same server process, not recreated"
    );
    assert!(adopted.server.as_ref().unwrap().is_alive());
    assert!(node.log().contains("adopting"), "{}", node.log());
    let keep = wait_ready(&cp, &node, ns, "keep");
    let ip = keep["status"]["podIP"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        node.tcp_from_node(ip, 80).as_deref(),
        Ok("plk-restart/keep")
    );

    // --teardown removes what is recorded, then the state directory.
    node.stop_kubelet();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade-lab-kubelet"))
        .arg("--teardown")
        .arg("--state-dir")
        .arg(&node.state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!adopted.server.as_ref().unwrap().is_alive());
    assert!(!NetNs::open(adopted.netns.as_ref().unwrap()).exists());
    assert!(!node.state_dir.exists());
}
