//! A pod whose CNI ADD fails stays not Ready with the error, leaves nothing behind and
//! is retried until it succeeds; a pod that cannot run as written says why, and the
//! others run.

use std::path::PathBuf;

use crate::*;

/// A chained plugin that fails ADD with CNI code 11 ("try again later", what
/// palisade-cni says when the agent is not ready) while `<itself>.fail` exists, and
/// otherwise is Debian's `tuning` (which passes the previous result through).
fn flaky_plugin(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("plk-flaky");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ] && [ -e \"$0.fail\" ]; then\n  \
             echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"plk-flaky: agent not ready\"}}'\n  \
             exit 1\nfi\nexec {}/tuning\n",
            palisade_testkit::CNI_DIR
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_failed_cni_add_leaves_nothing_is_reported_and_retried_and_a_bad_pod_fails_alone() {
    if !palisade_testkit::require(&[palisade_testkit::Need::CniPlugin("tuning")]) {
        return;
    }
    let Some(cp) = cluster() else { return };
    let plugins = std::env::temp_dir().join(format!("plk{}-flaky", std::process::id()));
    let plugin = flaky_plugin(&plugins);
    let flag = plugin.with_extension("fail");
    std::fs::write(&flag, "").unwrap();
    let node = TestNode::start_with(
        &cp,
        "f",
        "10.250.3.1",
        "10.244.3.0/24",
        Some(serde_json::json!([{"type": "plk-flaky"}])),
        vec![plugins.clone()],
    );
    let ns = "plk-fail";
    namespace(&cp, ns);
    let mut pod = pod_manifest(ns, "p", &[(80, "TCP")]);
    pod["spec"]["nodeName"] = node.name.as_str().into();
    apply(&cp, pod);
    let cond = wait_for(
        "Ready=False naming the CNI error",
        || node.log(),
        || {
            let p = get(&cp, &["pod", "p", "-n", ns])?;
            let c = condition(&p, "Ready")?.clone();
            (c["status"] == "False" && c["reason"] == "NetworkSetupFailed").then_some(c)
        },
    );
    let msg = cond["message"].as_str().unwrap();
    assert!(
        msg.contains("plk-flaky: agent not ready") && msg.contains("CNI ADD"),
        "{msg}"
    );

    // Nothing half-made: no pod namespace, no record, no address held in host-local.
    // The kubelet keeps retrying; SIGTERM is handled between attempts, so once it has
    // exited no attempt is under way and what is left is what an attempt leaves.
    let mut node = node;
    node.stop_kubelet();
    // Retried with backoff (0.5 s doubling), not in a loop driven by the kubelet's
    // own status reports: a few attempts in these seconds, not dozens.
    let attempts = node
        .log()
        .lines()
        .filter(|l| l.contains("making") && l.contains("plk-fail/p"))
        .count();
    assert!(
        (1..=8).contains(&attempts),
        "{attempts} attempts:\n{}",
        node.log()
    );
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{}-", node.name)) && *n != node.netns)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::read_dir(node.state_dir.join("pods"))
            .unwrap()
            .count(),
        0,
        "no record"
    );
    let held: Vec<String> = std::fs::read_dir(node.state_dir.join("ipam/palisade-lab-kubelet"))
        .map(|d| {
            // One file per address held; the gateway is reserved by the kubelet itself.
            d.flatten()
                .filter(|e| {
                    !std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .starts_with("palisade-lab-reserved")
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        held.is_empty(),
        "host-local released every address: {held:?}"
    );

    node.start_kubelet();

    // A pod that cannot be run as written fails alone, naming the annotation.
    let mut bad = pod_manifest(ns, "bad", &[(80, "TCP")]);
    bad["spec"]["nodeName"] = node.name.as_str().into();
    bad["metadata"]["annotations"] =
        serde_json::json!({"lab.palisade.io/send": "icmp://10.0.0.1:1"});
    apply(&cp, bad);
    let c = wait_for(
        "the bad pod's InvalidPodSpec",
        || node.log(),
        || {
            let p = get(&cp, &["pod", "bad", "-n", ns])?;
            let c = condition(&p, "Ready")?.clone();
            (c["reason"] == "InvalidPodSpec").then_some(c)
        },
    );
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("lab.palisade.io/send"),
        "{c}"
    );

    // The agent becomes ready: the retry succeeds.
    std::fs::remove_file(&flag).unwrap();
    let p = wait_ready(&cp, &node, ns, "p");
    let ip: std::net::IpAddr = p["status"]["podIP"].as_str().unwrap().parse().unwrap();
    assert_eq!(node.tcp_from_node(ip, 80).as_deref(), Ok("plk-fail/p"));
    drop(node);
    let _ = std::fs::remove_dir_all(&plugins);
}
