//! The chart rendered offline: the plain manifests are its output, the agent's pod has
//! what a node agent needs and nothing privileged, values reach the objects, bad values
//! are refused naming the field.

use palisade_deploy::{documents, find, manifests_file, render, NAMESPACE};
use serde_json::Value;

#[test]
fn manifests_are_the_chart_rendered() {
    let rendered = render(&[]).expect("helm template");
    let file = std::fs::read_to_string(manifests_file()).expect("deploy/manifests/palisade.yaml");
    assert!(
        rendered == file,
        "deploy/manifests/palisade.yaml is not `helm template` of the chart: run scripts/render-manifests.sh"
    );
}

fn containers(pod_spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod_spec[k].as_array().into_iter().flatten())
        .collect()
}

#[test]
fn the_agent_runs_on_every_node_on_the_host_network_with_named_capabilities_not_privileged() {
    let docs = documents(&render(&[]).unwrap()).unwrap();
    let ds = find(&docs, "DaemonSet", "palisade-agent").expect("agent DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], NAMESPACE);
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["serviceAccountName"], "palisade-agent");
    // One toleration with operator Exists and no key or effect tolerates every taint.
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    for k in ["hostPID", "hostIPC"] {
        assert!(spec[k].is_null() || spec[k] == false, "{k}");
    }
    for c in containers(spec) {
        let sc = &c["securityContext"];
        assert!(
            sc["privileged"].is_null() || sc["privileged"] == false,
            "{}",
            c["name"]
        );
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{}",
            c["name"]
        );
    }
    let agent = find_container(spec, "agent");
    assert_eq!(
        agent["securityContext"]["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"])
    );
    let mounts: Vec<(&str, &str)> = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        mounts.contains(&("bpffs", "/sys/fs/bpf")) && mounts.contains(&("run", "/run/palisade"))
    );
    let host_path = |name: &str| {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["hostPath"]["path"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    assert_eq!(host_path("bpffs"), "/sys/fs/bpf");
    assert_eq!(host_path("cni-conf"), "/etc/cni/net.d");
    assert_eq!(host_path("cni-bin"), "/opt/cni/bin");
    assert_eq!(host_path("run"), "/run/palisade");
    // The init step chains the plugin before the agent starts.
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "install-cni");
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "install");
    assert!(
        args.contains(&"--conf-dir=/host/etc/cni/net.d")
            && args.contains(&"--bin-dir=/host/opt/cni/bin")
    );
    assert!(
        args.contains(&"--fail-policy=closed"),
        "fail closed by default: {args:?}"
    );
    let agent_args = args_of(agent);
    assert!(agent_args.contains(&"--source=kubernetes".to_owned()));
    assert!(agent_args.contains(&"--node-name=$(NODE_NAME)".to_owned()));
}

fn find_container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    containers(spec)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name}"))
}

fn args_of(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn values_for_an_air_gapped_registry_fail_policy_and_decision_log_reach_every_container() {
    let docs = documents(
        &render(&[
            ("image.registry", "registry.internal:5000"),
            ("image.repository", "mirror/palisade"),
            ("image.tag", "9.9.9"),
            ("failPolicy", "open"),
            ("agent.decisionLog.level", "all"),
            ("metrics.port", "9100"),
        ])
        .unwrap(),
    )
    .unwrap();
    let mut images = Vec::new();
    for d in &docs {
        for c in containers(&d["spec"]["template"]["spec"]) {
            images.push(c["image"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        images.len(),
        5,
        "install-cni, agent, cni-chain, metrics, controller"
    );
    assert!(
        images
            .iter()
            .all(|i| i == "registry.internal:5000/mirror/palisade:9.9.9"),
        "{images:?}"
    );
    let spec = &find(&docs, "DaemonSet", "palisade-agent").unwrap()["spec"]["template"]["spec"];
    assert!(args_of(find_container(spec, "install-cni")).contains(&"--fail-policy=open".into()));
    assert!(args_of(find_container(spec, "cni-chain")).contains(&"--fail-policy=open".into()));
    assert!(args_of(find_container(spec, "agent")).contains(&"--log-mode=all".into()));
    assert!(args_of(find_container(spec, "metrics")).contains(&"--listen=0.0.0.0:9100".into()));

    let digest = format!("sha256:{}", "ab".repeat(32));
    let docs = documents(&render(&[("image.digest", &digest)]).unwrap()).unwrap();
    let ds = find(&docs, "DaemonSet", "palisade-agent").unwrap();
    assert_eq!(
        find_container(&ds["spec"]["template"]["spec"], "agent")["image"],
        format!("ghcr.io/palisade/palisade@{digest}")
    );
}

#[test]
fn map_capacities_reach_the_agent_only_when_set() {
    let agent_args = |set: &[(&str, &str)]| {
        let docs = documents(&render(set).unwrap()).unwrap();
        let spec = &find(&docs, "DaemonSet", "palisade-agent").unwrap()["spec"]["template"]["spec"];
        args_of(find_container(spec, "agent"))
    };
    let default = agent_args(&[]);
    assert!(
        !default.iter().any(|a| a.contains("-entries")),
        "the agent's own defaults apply: {default:?}"
    );
    let set = agent_args(&[
        ("agent.maps.hostEntries", "300000"),
        ("agent.maps.prefixEntries", "131072"),
        ("agent.maps.policyEntries", "524288"),
        ("agent.maps.conntrackEntries", "1048576"),
    ]);
    for want in [
        "--host-entries=300000",
        "--prefix-entries=131072",
        "--policy-entries=524288",
        "--conntrack-entries=1048576",
    ] {
        assert!(set.contains(&want.to_string()), "{want} not in {set:?}");
    }
}

/// Issue 14, least privilege: the read-only socket's group reaches the agent only when
/// set (unset: root only), and the metrics sidecar, which only reads, uses that socket.
#[test]
fn the_read_only_group_reaches_the_agent_only_when_set() {
    let spec_of = |set: &[(&str, &str)]| {
        let docs = documents(&render(set).unwrap()).unwrap();
        find(&docs, "DaemonSet", "palisade-agent").unwrap()["spec"]["template"]["spec"].clone()
    };
    let default = spec_of(&[]);
    let agent = args_of(find_container(&default, "agent"));
    assert!(
        agent.contains(&"--socket=/run/palisade/agent.sock".into()),
        "{agent:?}"
    );
    assert!(
        agent.contains(&"--read-only-socket=/run/palisade/palisade-ro.sock".into()),
        "{agent:?}"
    );
    assert!(
        !agent.iter().any(|a| a.starts_with("--read-only-group")),
        "unset means root only (the agent's default 0): {agent:?}"
    );
    assert!(args_of(find_container(&default, "metrics"))
        .contains(&"--socket=/run/palisade/palisade-ro.sock".into()));
    for (value, want) in [
        ("65534", "--read-only-group=65534"),
        ("4294967294", "--read-only-group=4294967294"),
        ("palisade-readers", "--read-only-group=palisade-readers"),
    ] {
        let agent = args_of(find_container(
            &spec_of(&[("agent.api.readOnlyGroup", value)]),
            "agent",
        ));
        assert!(agent.contains(&want.to_string()), "{want} not in {agent:?}");
    }
}

#[test]
fn a_bad_value_is_refused_naming_it() {
    for (key, value, named) in [
        ("failPolicy", "maybe", "/failPolicy"),
        (
            "agent.decisionLog.level",
            "everything",
            "/agent/decisionLog/level",
        ),
        ("agent.decisonLog.level", "all", "decisonLog"),
        ("image.digest", "latest", "/image/digest"),
        ("metrics.port", "0", "/metrics/port"),
        ("agent.maps.hostEntries", "0", "/agent/maps/hostEntries"),
        ("agent.maps.hostEnties", "5", "hostEnties"),
        ("agent.api.readOnlyGroup", "-1", "/agent/api/readOnlyGroup"),
        ("agent.api.readOnlyGroup", "a b", "/agent/api/readOnlyGroup"),
        ("agent.api.readOnlyGrop", "5", "readOnlyGrop"),
    ] {
        let err = render(&[(key, value)]).expect_err(key).to_string();
        assert!(err.contains(named), "{key}={value}: {err}");
    }
}

#[test]
fn nothing_in_the_chart_is_privileged_or_cluster_admin_like() {
    let docs = documents(&render(&[]).unwrap()).unwrap();
    for d in &docs {
        for rule in d["rules"].as_array().into_iter().flatten() {
            for field in ["apiGroups", "resources", "verbs"] {
                let list = rule[field].as_array().unwrap();
                assert!(
                    !list.iter().any(|v| v == "*"),
                    "{}: wildcard in {field}",
                    d["metadata"]["name"]
                );
            }
            let resources = rule["resources"].as_array().unwrap();
            assert!(
                !resources
                    .iter()
                    .any(|r| r == "secrets" || r == "configmaps"),
                "{}: {rule}",
                d["metadata"]["name"]
            );
            let verbs = rule["verbs"].as_array().unwrap();
            assert!(
                !verbs.iter().any(|v| [
                    "delete",
                    "deletecollection",
                    "escalate",
                    "bind",
                    "impersonate"
                ]
                .contains(&v.as_str().unwrap())),
                "{}: {rule}",
                d["metadata"]["name"]
            );
        }
        if d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding" {
            let role = d["roleRef"]["name"].as_str().unwrap();
            assert!(role.starts_with("palisade-"), "bound to {role}");
        }
    }
}
