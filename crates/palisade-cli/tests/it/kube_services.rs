//! Issue 11 on real packets in the Kubernetes lab (real kube-proxy in iptables mode):
//! traffic to a Service ClusterIP is judged by the backend Palisade sends it to, with a
//! named `targetPort`, backends on both nodes, some allowed and some denied, and while
//! the backends change.
//!
//! Each connection writes a mark (`palisade-send <client> <seq>`), reads the server's
//! reply (the serving pod's `namespace/name`) and is matched three ways: the reply,
//! the marked arrival in the serving pod's log, and the agents' decision records of
//! its source port (which name the backend a dropped connection was sent to).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_lab::netns::NetNs;

use crate::kube_lab::{eventually, kube_privileged, records, KubeLabGuard};

/// Every decision is logged: no per-pod or per-node budget drops a record the
/// attribution of a failed connection needs.
const UNLIMITED_EVENTS: &str = "--events-per-sec 0 --pod-events-per-sec 0";
/// A connect to a denied backend fails by this timeout (its SYNs are dropped); an
/// allowed one must connect well within it, also on a loaded machine.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One TCP connection's outcome, from the client's side.
#[derive(Debug, Clone)]
struct Conn {
    seq: u64,
    /// Its own source port ([`PORT_BASE`] + `seq`): decision records name it, and no
    /// other connection of the client's namespace uses it.
    sport: u16,
    /// The reply: the serving pod's `namespace/name`.
    served_by: Option<String>,
    error: Option<String>,
}

/// Source port of the connection with sequence number 0.
const PORT_BASE: u64 = 20_000;

/// One marked connection from `src:PORT_BASE+seq` (inside the caller's namespace) to
/// `to`: connect, write the mark, read the reply to its end.
fn connect_once(identity: &str, src: IpAddr, to: SocketAddr, seq: u64) -> Conn {
    let sport = u16::try_from(PORT_BASE + seq).expect("a source port");
    let attempt = || -> std::io::Result<String> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.bind(&SocketAddr::new(src, sport).into())?;
        s.connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
        let mut c: std::net::TcpStream = s.into();
        c.write_all(format!("{} {identity} {seq}\n", palisade_lab::sender::MARK).as_bytes())?;
        c.shutdown(std::net::Shutdown::Write)?;
        c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let mut reply = String::new();
        c.read_to_string(&mut reply)?;
        Ok(reply.trim().to_string())
    };
    let r = attempt();
    Conn {
        seq,
        sport,
        error: r.as_ref().err().map(|e| e.to_string()),
        served_by: r.ok().filter(|r| !r.is_empty()),
    }
}

/// Connections `seqs` from pod `client` (its namespace and address) to `to`,
/// `parallel` at a time.
fn connect_many(
    client: &Client,
    to: SocketAddr,
    seqs: std::ops::Range<u64>,
    parallel: u64,
) -> Vec<Conn> {
    let next = AtomicU64::new(seqs.start);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                NetNs::open(&client.netns)
                    .run_in(|| loop {
                        let seq = next.fetch_add(1, Ordering::SeqCst);
                        if seq >= seqs.end {
                            break;
                        }
                        let c = connect_once(&client.key, client.ip, to, seq);
                        out.lock().unwrap().push(c);
                    })
                    .expect("entering the client's namespace");
            });
        }
    });
    let mut v = out.into_inner().unwrap();
    v.sort_by_key(|c| c.seq);
    v
}

/// A pod the test connects from: its key, namespace and IPv4 address.
#[derive(Debug, Clone)]
struct Client {
    key: String,
    netns: String,
    ip: IpAddr,
}

fn pod(lab: &KubeLabGuard, key: &str) -> Client {
    let rec = records(lab)
        .into_iter()
        .find(|r| r.key() == key)
        .unwrap_or_else(|| panic!("no kubelet runs {key}"));
    Client {
        key: key.to_string(),
        netns: rec.netns.clone().expect("a pod namespace"),
        ip: *rec
            .ips
            .iter()
            .find(|i| i.is_ipv4())
            .expect("an IPv4 address"),
    }
}

/// The backends (address, target port) that node `index`'s kernel holds for the TCP
/// frontend `addr:port`, read from the pinned maps (what packets see).
fn kernel_backends(
    lab: &KubeLabGuard,
    index: usize,
    addr: Ipv4Addr,
    port: u16,
) -> Vec<(IpAddr, u16)> {
    use aya::maps::{HashMap, Map, MapData};
    use palisade_datapath::abi::{SvcAddr, SvcBackendKey, SvcFrontendKey, SvcFrontendValue};
    let state = lab.state();
    let maps = PathBuf::from(state["nodes"][index]["pin_root"].as_str().unwrap()).join("maps");
    let open = |name: &str| Map::HashMap(MapData::from_pin(maps.join(name)).expect("pinned map"));
    let fronts: HashMap<MapData, SvcFrontendKey, SvcFrontendValue> =
        HashMap::try_from(open("palisade_svc_frontends")).unwrap();
    let backs: HashMap<MapData, SvcBackendKey, SvcAddr> =
        HashMap::try_from(open("palisade_svc_backends")).unwrap();
    let mut key = SvcFrontendKey {
        port: port.to_be(),
        proto: 6,
        family: 4,
        ..Default::default()
    };
    key.addr[..4].copy_from_slice(&addr.octets());
    let Ok(v) = fronts.get(&key, 0) else {
        return Vec::new();
    };
    (0..u32::from(v.count))
        .filter_map(|index| backs.get(&SvcBackendKey { set: v.set, index }, 0).ok())
        .map(|b| {
            let ip = IpAddr::from([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]);
            (ip, u16::from_be(b.port))
        })
        .collect()
}

/// Polls until both nodes' kernels hold exactly `want` for the frontend.
fn wait_for_backends(
    lab: &KubeLabGuard,
    addr: Ipv4Addr,
    port: u16,
    want: &BTreeSet<(IpAddr, u16)>,
) {
    eventually(
        Duration::from_secs(90),
        &format!("{addr}:{port} -> {want:?} on both nodes"),
        || {
            (0..2)
                .all(|i| {
                    kernel_backends(lab, i, addr, port)
                        .into_iter()
                        .collect::<BTreeSet<_>>()
                        == *want
                })
                .then_some(())
        },
    );
}

/// Every decision record of both nodes (JSON lines of `decisions.jsonl`).
fn decisions(lab: &KubeLabGuard) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for n in lab.state()["nodes"].as_array().unwrap() {
        let p = PathBuf::from(n["dir"].as_str().unwrap()).join("decisions.jsonl");
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    out
}

/// The decision records of TCP connections from `src`, by source port.
fn decisions_by_port(lab: &KubeLabGuard, src: IpAddr) -> BTreeMap<u16, Vec<serde_json::Value>> {
    let mut m: BTreeMap<u16, Vec<serde_json::Value>> = BTreeMap::new();
    let src = src.to_string();
    for d in decisions(lab) {
        if d["protocol"] == "TCP" && d["src_ip"] == src.as_str() {
            m.entry(d["src_port"].as_u64().unwrap() as u16)
                .or_default()
                .push(d);
        }
    }
    m
}

/// Marked arrivals from `identity` in pod `key`'s server log, by sequence number.
fn arrivals_at(lab: &KubeLabGuard, key: &str, identity: &str) -> BTreeSet<u64> {
    palisade_lab::sender::arrivals(&lab.pod_log(key))
        .into_iter()
        .filter(|a| a.identity == identity)
        .map(|a| a.seq)
        .collect()
}

const NS: &str = "svc";
/// The Service's ClusterIP (in the lab's 10.96.0.0/16).
const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);

/// A backend of Service `web` (or, with `app` other than `web`, a former one): its
/// container port named `http` is `port`.
fn web_pod(name: &str, node: &str, app: &str, labels: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels: {{app: {app}, {labels}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: lab\n    ports:\n    - {{name: http, containerPort: {port}}}\n---\n"
    )
}

/// The namespace, the two clients, the Service and the policies; `backends` are
/// [`web_pod`] documents.
fn service_objects(backends: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{role: client}}}}
spec:
  nodeName: n1
  containers: [{{name: c, image: lab}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: control, namespace: {NS}, labels: {{role: control}}}}
spec:
  nodeName: n2
  containers: [{{name: c, image: lab}}]
---
{backends}apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  clusterIP: {WEB_IP}
  selector: {{app: web}}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: http}}]
---
# The client may send only to pods labelled access=open (denies web-d1, web-d3).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client-to-open, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{role: client}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{podSelector: {{matchLabels: {{access: open}}}}}}]}}]
---
# web-d2 is open to the client's egress but admits only the control pod.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: guarded-from-control, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{guarded: "yes"}}}}
  policyTypes: [Ingress]
  ingress: [{{from: [{{podSelector: {{matchLabels: {{role: control}}}}}}]}}]
"#
    )
}

/// Checks one round of the client's connections against the backends they went to
/// (`names`: pod address -> `namespace/name`); returns per backend how many
/// connections were served and how many dropped.
fn check_round(
    lab: &KubeLabGuard,
    client: &Client,
    conns: &[Conn],
    names: &BTreeMap<String, String>,
    allowed: &BTreeSet<String>,
    denied: &BTreeSet<String>,
) -> BTreeMap<String, (usize, usize)> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    // The decision records of every connection's source port, once all are written
    // (the agent drains the ring buffer at least every 100 ms). A served connection
    // has its egress allow; a dropped one its deny (egress, or the backend's ingress).
    let by_port = eventually(
        Duration::from_secs(30),
        "the decision records of every connection",
        || {
            let m = decisions_by_port(lab, client.ip);
            conns
                .iter()
                .all(|c| {
                    m.get(&c.sport).is_some_and(|recs| {
                        c.served_by.is_some() || recs.iter().any(|r| r["verdict"] == "deny")
                    })
                })
                .then_some(m)
        },
    );
    for c in conns {
        let recs = &by_port[&c.sport];
        // Every record of the connection (its SYNs, both sides) names one backend:
        // the address and target port Palisade translated the ClusterIP to.
        let judged: BTreeSet<(String, u64)> = recs
            .iter()
            .map(|r| {
                (
                    r["dst_ip"].as_str().unwrap().to_string(),
                    r["dst_port"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            judged.len(),
            1,
            "connection {} (port {}) judged against one backend: {recs:?}",
            c.seq,
            c.sport
        );
        let (ip, port) = judged.into_iter().next().unwrap();
        let backend = names
            .get(&ip)
            .unwrap_or_else(|| panic!("connection {} went to {ip}, no backend", c.seq))
            .clone();
        let want_port = if backend.ends_with("-d1") { 9090 } else { 8080 };
        assert_eq!(port, want_port, "{backend}'s named port `http`");
        let dropped = recs.iter().any(|r| r["verdict"] == "deny");
        match &c.served_by {
            Some(by) => {
                assert_eq!(
                    by, &backend,
                    "connection {} served by the backend it was judged against",
                    c.seq
                );
                assert!(
                    allowed.contains(by),
                    "connection {} reached {by}, not an allowed backend",
                    c.seq
                );
                assert!(!dropped, "a served connection has no deny record: {recs:?}");
                counts.entry(backend).or_default().0 += 1;
            }
            None => {
                assert!(
                    denied.contains(&backend),
                    "connection {} to allowed backend {backend} failed: {:?} {recs:?}",
                    c.seq,
                    c.error
                );
                assert!(
                    dropped,
                    "connection {} to {backend} failed with a deny record",
                    c.seq
                );
                counts.entry(backend).or_default().1 += 1;
            }
        }
    }
    // The servers' own logs: every served connection arrived where the reply says,
    // and no mark of the client ever arrived at a denied backend.
    for b in allowed {
        let got = arrivals_at(lab, b, &client.key);
        for c in conns
            .iter()
            .filter(|c| c.served_by.as_deref() == Some(b.as_str()))
        {
            assert!(got.contains(&c.seq), "{b}'s log has connection {}", c.seq);
        }
    }
    for d in denied {
        let got = arrivals_at(lab, d, &client.key);
        assert!(
            got.is_empty(),
            "connections {got:?} of {} reached denied {d}",
            client.key
        );
    }
    counts
}

/// Pod address -> `namespace/name`, for the pods of [`NS`].
fn pod_names(lab: &KubeLabGuard) -> BTreeMap<String, String> {
    records(lab)
        .into_iter()
        .filter(|r| r.namespace == NS)
        .flat_map(|r| {
            let k = r.key();
            r.ips.into_iter().map(move |i| (i.to_string(), k.clone()))
        })
        .collect()
}

fn print_counts(what: &str, counts: &BTreeMap<String, (usize, usize)>) {
    eprintln!("{what}: per backend (served, dropped):");
    for (b, (ok, drop)) in counts {
        eprintln!("  {b:<12} {ok:>4} served {drop:>4} dropped");
    }
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| format!("{NS}/{s}")).collect()
}

#[test]
fn issue_11_a_thousand_connections_through_a_cluster_ip_each_judged_by_the_backend_that_served_it()
{
    if kube_privileged().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let lab = KubeLabGuard::up_with_agent_args(2, UNLIMITED_EVENTS);
    // Backends on both nodes; the named port `http` is 8080 on most and 9090 on web-d1
    // (the EndpointSlice controller resolves it per pod).
    let round_1 = [
        web_pod("web-a1", "n1", "web", "access: open", 8080),
        web_pod("web-a2", "n2", "web", "access: open", 8080),
        web_pod("web-d1", "n1", "web", "access: closed", 9090),
        web_pod(
            "web-d2",
            "n2",
            "web",
            "access: open, guarded: \"yes\"",
            8080,
        ),
    ]
    .concat();
    lab.apply(&crate::lab::write(
        tmp.path(),
        "svc-1.yaml",
        &service_objects(&round_1),
    ));
    let client = pod(&lab, "svc/client");
    let control = pod(&lab, "svc/control");
    let ip = |k: &str| pod(&lab, k).ip;
    let want: BTreeSet<(IpAddr, u16)> = [
        (ip("svc/web-a1"), 8080),
        (ip("svc/web-a2"), 8080),
        (ip("svc/web-d1"), 9090),
        (ip("svc/web-d2"), 8080),
    ]
    .into();
    wait_for_backends(&lab, WEB_IP, 80, &want);
    let frontend = SocketAddr::from((WEB_IP, 80));

    // The control pod (no egress policy; the one web-d2 admits) reaches every backend
    // through the ClusterIP: the denied ones serve, and the Service spreads.
    let ctl = connect_many(&control, frontend, 0..200, 20);
    let ctl_by: BTreeSet<String> = ctl.iter().filter_map(|c| c.served_by.clone()).collect();
    assert!(
        ctl.iter().all(|c| c.served_by.is_some()),
        "{:?}",
        ctl.iter().find(|c| c.error.is_some())
    );
    assert_eq!(ctl_by, set(&["web-a1", "web-a2", "web-d1", "web-d2"]));

    // 1,000 connections of the client, each checked against the backend that got it.
    let t = Instant::now();
    let conns = connect_many(&client, frontend, 0..1000, 64);
    let secs_1 = t.elapsed().as_secs_f64();
    let names = pod_names(&lab);
    let counts = check_round(
        &lab,
        &client,
        &conns,
        &names,
        &set(&["web-a1", "web-a2"]),
        &set(&["web-d1", "web-d2"]),
    );
    print_counts("round 1 (1,000 connections)", &counts);
    assert_eq!(counts.len(), 4, "every backend got connections: {counts:?}");
    let served = conns.iter().filter(|c| c.served_by.is_some()).count();
    eprintln!(
        "round 1: {served} served, {} dropped, {secs_1:.1} s",
        1000 - served
    );

    // Backends change under traffic: web-a1 leaves the Service (relabelled), web-a3
    // (allowed) and web-d3 (denied) join. Connections run all along; none may reach
    // a denied backend, whichever list a packet sees.
    let round_2 = [
        web_pod("web-a1", "n1", "retired", "access: open", 8080),
        web_pod("web-a2", "n2", "web", "access: open", 8080),
        web_pod("web-d1", "n1", "web", "access: closed", 9090),
        web_pod(
            "web-d2",
            "n2",
            "web",
            "access: open, guarded: \"yes\"",
            8080,
        ),
        web_pod("web-a3", "n1", "web", "access: open", 8080),
        web_pod("web-d3", "n2", "web", "access: closed", 8080),
    ]
    .concat();
    let stop = Arc::new(AtomicBool::new(false));
    let during = {
        let (stop, client) = (stop.clone(), client.clone());
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut seq = 1_000;
            while !stop.load(Ordering::SeqCst) && seq < 29_000 {
                all.extend(connect_many(&client, frontend, seq..seq + 32, 32));
                seq += 32;
            }
            all
        })
    };
    lab.apply(&crate::lab::write(
        tmp.path(),
        "svc-2.yaml",
        &service_objects(&round_2),
    ));
    let want_2: BTreeSet<(IpAddr, u16)> = [
        (ip("svc/web-a2"), 8080),
        (ip("svc/web-d1"), 9090),
        (ip("svc/web-d2"), 8080),
        (ip("svc/web-a3"), 8080),
        (ip("svc/web-d3"), 8080),
    ]
    .into();
    wait_for_backends(&lab, WEB_IP, 80, &want_2);
    stop.store(true, Ordering::SeqCst);
    let during = during.join().unwrap();
    let denied_2 = set(&["web-d1", "web-d2", "web-d3"]);
    let reached: BTreeMap<String, usize> =
        during
            .iter()
            .filter_map(|c| c.served_by.clone())
            .fold(BTreeMap::new(), |mut m, b| {
                *m.entry(b).or_default() += 1;
                m
            });
    eprintln!(
        "during the change: {} connections, served by {reached:?}",
        during.len()
    );
    assert!(during.len() >= 32, "traffic ran during the change");
    for b in reached.keys() {
        assert!(
            !denied_2.contains(b),
            "a connection reached denied {b} during the change"
        );
    }
    for d in &denied_2 {
        assert!(
            arrivals_at(&lab, d, &client.key).is_empty(),
            "{d}'s log: the client's marks arrived"
        );
    }

    // Again 1,000 connections against the new list: web-a1 gets none, web-a3 some.
    let t = Instant::now();
    let conns = connect_many(&client, frontend, 30_000..31_000, 64);
    let secs_2 = t.elapsed().as_secs_f64();
    let names = pod_names(&lab);
    let counts = check_round(
        &lab,
        &client,
        &conns,
        &names,
        &set(&["web-a2", "web-a3"]),
        &denied_2,
    );
    print_counts("round 2 (1,000 connections)", &counts);
    assert_eq!(counts.len(), 5, "every backend got connections: {counts:?}");
    assert!(
        !counts.contains_key("svc/web-a1"),
        "the backend that left got none"
    );
    let left: BTreeSet<u64> = arrivals_at(&lab, "svc/web-a1", &client.key)
        .into_iter()
        .filter(|s| *s >= 30_000)
        .collect();
    assert!(
        left.is_empty(),
        "round 2 reached the retired web-a1: {left:?}"
    );
    let served = conns.iter().filter(|c| c.served_by.is_some()).count();
    eprintln!(
        "round 2: {served} served, {} dropped, {secs_2:.1} s",
        1000 - served
    );
    eprintln!("Service test: {:.1} s", started.elapsed().as_secs_f64());
}
