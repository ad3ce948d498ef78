use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use palisade_lab::probe::{Family, ProbeOptions, ProbeReport, Verdict};
use palisade_lab::server::ServerCommand;
use palisade_lab::{Lab, LabConfig};
use palisade_policy::model::{ContainerPort, Pod, Protocol};

use crate::{can_run, unique_name};

fn pod(ns: &str, name: &str, ips: &[&str], ports: &[(u16, Protocol)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::new().into_iter().collect(),
        ports: ports
            .iter()
            .map(|&(port, protocol)| ContainerPort {
                name: None,
                port,
                protocol,
            })
            .collect(),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        host_network: false,
        node_name: None,
        service_account: "default".into(),
    }
}

/// Reachability tests use a generous deadline: they assert "reached", not speed, and
/// the machine is shared.
fn generous() -> ProbeOptions {
    ProbeOptions {
        timeout: std::time::Duration::from_secs(3),
        ..Default::default()
    }
}

fn config(name: &str) -> LabConfig {
    let mut c = LabConfig::new(name);
    c.state_dir = std::env::temp_dir().join(format!("palisade-lab-test-{name}"));
    c.server = Some(ServerCommand {
        program: PathBuf::from(env!("CARGO_BIN_EXE_palisade-lab-serve")),
        args: vec![],
    });
    c
}

pub fn pods() -> Vec<Pod> {
    use Protocol::*;
    vec![
        pod("x", "a", &["10.244.0.10", "fd00:10:244::10"], &[(80, Tcp)]),
        pod(
            "y",
            "b",
            &["10.244.0.11", "fd00:10:244::11"],
            &[(80, Tcp), (53, Udp)],
        ),
        // No status.podIPs: host-local assigns one address per family.
        pod("y", "c", &[], &[(80, Tcp), (53, Udp)]),
    ]
}

fn assert_all_allow(report: &ProbeReport, pairs: usize) {
    assert_eq!(report.results.len(), pairs, "{report:#?}");
    for r in &report.results {
        assert_eq!(
            r.verdict,
            Verdict::Allow,
            "{}/{} {} -> {}: {}",
            report.port,
            report.protocol,
            r.from,
            r.to,
            r.reason
        );
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn without_policy_every_pod_reaches_every_other_on_every_family_and_protocol() {
    if !can_run() {
        return;
    }
    let name = unique_name();
    let lab = Lab::up(config(&name), &pods()).expect("lab up");
    let state = lab.state().clone();
    assert_eq!(state.pods.len(), 3);
    for p in &state.pods {
        assert!(!p.host_ifname.is_empty(), "{} has a host veth", p.key);
        assert!(
            p.server.as_ref().is_some_and(|s| s.is_alive()),
            "{} serves",
            p.key
        );
        assert_eq!(p.ips.len(), 2, "{} is dual-stack: {:?}", p.key, p.ips);
    }
    let c = state.pod("y/c").unwrap();
    assert!(c
        .ips
        .iter()
        .all(|ip| !["10.244.0.10", "10.244.0.11"].contains(&ip.to_string().as_str())));

    let v4 = lab.probe(80, Protocol::Tcp, generous());
    assert_all_allow(&v4, 6);
    let to_b = v4
        .results
        .iter()
        .find(|r| r.from == "x/a" && r.to == "y/b")
        .unwrap();
    assert!(
        to_b.reason.contains("\"y/b\""),
        "the reply names the server's pod: {}",
        to_b.reason
    );

    let v6 = lab.probe(
        80,
        Protocol::Tcp,
        ProbeOptions {
            family: Family::V6,
            ..Default::default()
        },
    );
    assert_all_allow(&v6, 6);

    let udp = lab.probe(53, Protocol::Udp, generous());
    assert_all_allow(&udp, 6);
    let to_a = udp.results.iter().find(|r| r.to == "x/a").unwrap();
    assert!(
        to_a.reason.contains("refused"),
        "x/a serves no UDP: {}",
        to_a.reason
    );

    let sctp = lab.probe(132, Protocol::Sctp, generous());
    assert_all_allow(&sctp, 6);
    let sctp6 = lab.probe(
        132,
        Protocol::Sctp,
        ProbeOptions {
            family: Family::V6,
            ..Default::default()
        },
    );
    assert_all_allow(&sctp6, 6);

    let json = serde_json::to_value(&v4).unwrap();
    assert_eq!(json["protocol"], "TCP");
    assert_eq!(json["results"][0]["verdict"], "allow");

    let problems = lab.down();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!netns_exists(&state.node_netns));
    for p in &state.pods {
        assert!(!netns_exists(&p.netns), "{} gone", p.netns);
        assert!(!p.server.as_ref().unwrap().is_alive());
    }
    assert!(!state.state_dir.exists());
}

#[test]
fn a_persisted_lab_keeps_serving_and_down_from_state_is_idempotent() {
    if !can_run() {
        return;
    }
    let name = unique_name();
    let dir = {
        let lab = Lab::up(config(&name), &pods()[..2]).expect("lab up");
        let state = lab.persist();
        state.state_dir
    };
    // The lab outlived its value: reopen it from disk, as a second CLI call would.
    let lab = Lab::load(&dir).expect("load");
    assert!(netns_exists(&lab.state().node_netns));
    assert_all_allow(&lab.probe(80, Protocol::Tcp, generous()), 2);
    let state = lab.state().clone();
    drop(lab);
    assert!(
        netns_exists(&state.node_netns),
        "a loaded lab is not torn down by drop"
    );

    assert!(state.teardown().is_empty());
    assert!(
        state.teardown().is_empty(),
        "second teardown finds nothing to do"
    );
    assert!(!netns_exists(&state.node_netns));
    assert!(state.pods.iter().all(|p| !netns_exists(&p.netns)));
}

#[test]
fn a_panic_after_up_still_removes_every_namespace() {
    if !can_run() {
        return;
    }
    let name = unique_name();
    let mut cfg = config(&name);
    cfg.server = None;
    let node = format!("{name}-node");
    let r = std::panic::catch_unwind(move || {
        let _lab = Lab::up(cfg, &pods()[..1]).expect("lab up");
        assert!(netns_exists(&format!("{name}-node")));
        panic!("test failure while the lab is up");
    });
    assert!(r.is_err());
    assert!(!netns_exists(&node));
}

/// Drops, in the node namespace only, everything forwarded to `host_ifname`.
/// iptables-legacy by name: the machine's default iptables is not ours to choose.
fn drop_towards(node: &str, host_ifname: &str) {
    for tool in ["iptables-legacy", "ip6tables-legacy"] {
        let st = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                node,
                tool,
                "-I",
                "FORWARD",
                "-o",
                host_ifname,
                "-j",
                "DROP",
            ])
            .status()
            .unwrap();
        assert!(st.success(), "{tool} in {node}");
    }
}

#[test]
fn a_drop_in_the_node_namespace_reads_as_deny_for_every_protocol_and_family() {
    if !can_run() {
        return;
    }
    let name = unique_name();
    let lab = Lab::up(config(&name), &pods()[..2]).expect("lab up");
    let b = lab.state().pod("y/b").unwrap().host_ifname.clone();
    drop_towards(&lab.state().node_netns, &b);
    let fast = ProbeOptions {
        timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    for (port, proto, family) in [
        (80, Protocol::Tcp, Family::V4),
        (80, Protocol::Tcp, Family::V6),
        (53, Protocol::Udp, Family::V4),
        (132, Protocol::Sctp, Family::V4),
        (132, Protocol::Sctp, Family::V6),
    ] {
        let report = lab.probe(port, proto, ProbeOptions { family, ..fast });
        assert_eq!(report.results.len(), 2);
        for r in &report.results {
            // a -> b: the request is dropped; b -> a: the answer is.
            assert_eq!(
                r.verdict,
                Verdict::Deny,
                "{port}/{:?} {family:?} {} -> {}: {}",
                proto,
                r.from,
                r.to,
                r.reason
            );
            assert_eq!(r.reason, "timeout after 300 ms");
        }
    }
    assert!(lab.down().is_empty());
}

#[test]
fn a_host_network_pod_serves_at_its_node_address_and_probes_leave_from_it() {
    if !can_run() {
        return;
    }
    let name = unique_name();
    // The node address as the manifests' loader gives it (the Node's InternalIP).
    let mut host = pod(
        "kube-system",
        "h",
        &["10.250.9.1"],
        &[(8080, Protocol::Tcp)],
    );
    host.host_network = true;
    // Another node's host-network pod on the same port: the same node namespace here.
    let mut host2 = pod(
        "kube-system",
        "h2",
        &["10.250.9.2"],
        &[(8080, Protocol::Tcp)],
    );
    host2.host_network = true;
    let pods = vec![
        pod("x", "a", &["10.244.0.10"], &[(8080, Protocol::Tcp)]),
        host,
        host2,
    ];
    let lab = Lab::up(config(&name), &pods).expect("lab up");
    let rec = lab.state().pod("kube-system/h").expect("recorded");
    assert_eq!(
        rec.netns,
        lab.state().node_netns,
        "runs in the node namespace"
    );
    let report = lab.probe(8080, Protocol::Tcp, generous());
    assert_all_allow(&report, 6);
    for r in &report.results {
        let want = format!("{:?}", r.to.as_str());
        assert!(
            r.reason.contains(&want),
            "{} -> {}: {}",
            r.from,
            r.to,
            r.reason
        );
    }

    // Probes from the host-network pod leave from the node address, not the
    // gateway address the kernel would choose in the node namespace.
    let a = lab.state().pod("x/a").unwrap();
    let a_ns = palisade_lab::netns::NetNs::open(&a.netns);
    let listener = a_ns
        .run_in(|| std::net::TcpListener::bind("0.0.0.0:9090").unwrap())
        .unwrap();
    let endpoints: Vec<_> = lab
        .endpoints()
        .into_iter()
        .filter(|e| e.key == "kube-system/h" || e.key == "x/a")
        .collect();
    let accept = std::thread::spawn(move || listener.accept().map(|(_, from)| from.ip()));
    let probe = palisade_lab::probe::probe_all(&endpoints, 9090, Protocol::Tcp, generous());
    let from = accept.join().unwrap().unwrap();
    assert!(
        probe.results.iter().any(|r| r.from == "kube-system/h"),
        "{probe:?}"
    );
    assert_eq!(from.to_string(), "10.250.9.1");

    // Removing it stops its server and leaves the node namespace.
    let server = rec.server.clone().unwrap();
    let node = lab.state().node_netns.clone();
    let mut lab = lab;
    lab.remove_pod("kube-system/h").unwrap();
    assert!(!server.is_alive());
    assert!(netns_exists(&node));
    let problems = lab.down();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!netns_exists(&node));
}
