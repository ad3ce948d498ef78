//! Issue 11 on real packets in the Kubernetes lab (real kube-proxy in iptables mode):
//! traffic to a Service ClusterIP is judged by the backend Palisade sends it to, with a
//! named `targetPort`, backends on both nodes, some allowed and some denied, and while
//! the backends change; and the seed-002 Calico policy, applied unchanged, keeps a pod
//! from the `kubernetes` Service, its endpoint and a metadata-service stand-in, also
//! after the API server's address moves.
//!
//! Each connection writes a mark (`palisade-send <client> <seq>`), reads the server's
//! reply (the serving pod's `namespace/name`) and is matched three ways: the reply,
//! the marked arrival in the serving pod's log, and the agents' decision records of
//! its source port (which name the backend a dropped connection was sent to).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_lab::netns::NetNs;

use crate::kube_lab::{eventually, kube_privileged, kubectl, records, KubeLabGuard};

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

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

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

/// The metadata-service stand-in: a namespace `<lab>-imds` of the test's own, linked
/// to the lab's router by a veth, holding 169.254.169.254 (the router routes it
/// there, as a VPC's does); a TCP server on port 80 that replies `imds` and records
/// every peer address. Dropping it deletes the namespace (and the veth with it).
struct Imds {
    _ns: NetNs,
    peers: Arc<Mutex<Vec<IpAddr>>>,
}

const IMDS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

impl Imds {
    fn start(lab: &KubeLabGuard) -> Imds {
        let name = format!("{}-imds", lab.name);
        let ns = NetNs::create(&name).expect("the metadata namespace");
        let router = format!("{}-net", lab.name);
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&[
            "-n", &router, "link", "add", "imds", "type", "veth", "peer", "name", "eth0", "netns",
            &name,
        ]);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            "169.254.169.253/30",
            "dev",
            "imds",
        ]);
        ip(&["-n", &router, "link", "set", "imds", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            "169.254.169.254/30",
            "dev",
            "eth0",
        ]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            "169.254.169.253",
        ]);
        let listener = ns
            .run_in(|| TcpListener::bind((IMDS, 80)).expect("binding 169.254.169.254:80"))
            .unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let p = peers.clone();
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                if let Ok(a) = c.peer_addr() {
                    p.lock().unwrap().push(a.ip());
                }
                let mut c = c;
                let _ = c.write_all(b"imds\n");
            }
        });
        Imds { _ns: ns, peers }
    }

    fn reached_by(&self, ip: IpAddr) -> usize {
        self.peers
            .lock()
            .unwrap()
            .iter()
            .filter(|p| **p == ip)
            .count()
    }
}

/// Whether a TCP connection from pod `c` to `to` is established within 2 s.
fn connects(c: &Client, to: SocketAddr) -> bool {
    connects_within(c, to, Duration::from_secs(2))
}

/// Whether a TCP connection from pod `c` to `to` is established within `timeout`.
fn connects_within(c: &Client, to: SocketAddr, timeout: Duration) -> bool {
    let src = c.ip;
    NetNs::open(&c.netns)
        .run_in(move || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .unwrap();
            s.bind(&SocketAddr::new(src, 0).into()).unwrap();
            s.connect_timeout(&to.into(), timeout).is_ok()
        })
        .unwrap()
}

/// The addresses in the `kubernetes` Service's EndpointSlice.
fn kubernetes_endpoints(bins: &palisade_kube_lab::Binaries, kc: &Path) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(&kubectl(
        bins,
        kc,
        &[
            "get",
            "endpointslice",
            "-n",
            "default",
            "-l",
            "kubernetes.io/service-name=kubernetes",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

const SEED_002_PODS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: manager
  namespace: default
  labels:
    app.kubernetes.io/managed-by: manager
    app.kubernetes.io/part-of: super-feature
spec:
  nodeName: n1
  containers: [{name: c, image: lab}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: other}}
spec:
  nodeName: n1
  containers: [{name: c, image: lab}]
---
apiVersion: v1
kind: Pod
metadata: {name: peer, namespace: default, labels: {app: peer}}
spec:
  nodeName: n2
  containers: [{name: c, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: peer, namespace: default}
spec:
  clusterIP: 10.96.0.81
  selector: {app: peer}
  ports: [{port: 80, protocol: TCP}]
"#;

#[test]
fn issue_11_seed_002_calico_policy_as_printed_blocks_the_api_and_metadata_and_follows_the_api_servers_move(
) {
    let Some(bins) = kube_privileged() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let lab = KubeLabGuard::up(2);
    let kc = lab.kubeconfig(tmp.path());
    let imds = Imds::start(&lab);
    lab.apply(&crate::lab::write(tmp.path(), "pods.yaml", SEED_002_PODS));
    let api_svc = SocketAddr::from(([10, 96, 0, 1], 443));
    let api_old = SocketAddr::from(([10, 240, 0, 2], 6443));
    let api_new = SocketAddr::from(([10, 240, 0, 3], 6443));
    let imds_addr = SocketAddr::from((IMDS, 80));
    let peer_svc = SocketAddr::from(([10, 96, 0, 81], 80));
    let (manager, other) = (pod(&lab, "default/manager"), pod(&lab, "default/other"));
    let peer = SocketAddr::new(pod(&lab, "default/peer").ip, 80);
    wait_for_backends(
        &lab,
        Ipv4Addr::new(10, 96, 0, 81),
        80,
        &[(peer.ip(), 80)].into(),
    );
    // Before the policy, both pods reach everything.
    for c in [&manager, &other] {
        for to in [api_svc, api_old, imds_addr, peer, peer_svc] {
            assert!(connects(c, to), "{} -> {to} before the policy", c.key);
        }
    }
    // The article's policy, unchanged (examples/calico-imds-api), with kubectl apply.
    let policy =
        crate::support::repo().join("examples/calico-imds-api/01-deny-k8s-api-and-imds.yaml");
    lab.apply(&policy);
    let before = imds.reached_by(manager.ip);
    for (to, allowed) in [
        (api_svc, false),
        (api_old, false),
        (imds_addr, false),
        (peer, true),
        (peer_svc, true),
    ] {
        assert_eq!(connects(&manager, to), allowed, "manager -> {to}");
        assert!(connects(&other, to), "other -> {to}");
    }
    assert_eq!(
        imds.reached_by(manager.ip),
        before,
        "no connection of manager reached the stand-in"
    );
    assert!(imds.reached_by(other.ip) >= 2);
    // The drops are the Calico policy's, by rule.
    let recs = decisions_by_port(&lab, manager.ip);
    let denied_by: BTreeSet<String> = recs
        .values()
        .flatten()
        .filter(|r| r["verdict"] == "deny")
        .filter_map(|r| r["policy"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        denied_by,
        ["NetworkPolicy.projectcalico.org default/deny-k8s-api-and-imds".to_string()].into(),
        "{recs:?}"
    );

    // The API server's address moves (a managed control plane's does): 10.240.0.3 is
    // added to its namespace and it restarts advertising it. Probes run throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = |c: Client, to: SocketAddr| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut ok = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let at = unix_ms();
                if connects_within(&c, to, Duration::from_millis(300)) {
                    ok.push(at);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (n, ok)
        })
    };
    let via_svc = probe(manager.clone(), api_svc);
    let direct_new = probe(manager.clone(), api_new);
    let cp_dir = PathBuf::from(lab.state()["control_plane_dir"].as_str().unwrap());
    let mut cp = palisade_kube_lab::persistent::PersistentControlPlane::load(&cp_dir).unwrap();
    let moved_at = unix_ms();
    cp.move_apiserver(api_new.ip())
        .expect("the API server restarts at 10.240.0.3");
    let published = eventually(
        Duration::from_secs(90),
        "the kubernetes EndpointSlice names only 10.240.0.3",
        || (kubernetes_endpoints(&bins, &kc) == ["10.240.0.3".to_string()].into()).then(unix_ms),
    );
    wait_for_backends(
        &lab,
        Ipv4Addr::new(10, 96, 0, 1),
        443,
        &[(api_new.ip(), 6443)].into(),
    );
    let enforced = unix_ms();
    // Keep probing a while with the move complete.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let (n_svc, ok_svc) = via_svc.join().unwrap();
    let (n_new, ok_new) = direct_new.join().unwrap();
    eprintln!(
        "API server moved: endpoint published {} ms after the restart began, both agents translate to it {} ms later; \
         manager's probes: {n_svc} via the ClusterIP ({} connected), {n_new} to 10.240.0.3:6443 ({} connected, last at +{} ms)",
        published - moved_at,
        enforced - published,
        ok_svc.len(),
        ok_new.len(),
        ok_new.last().map(|t| t - moved_at).unwrap_or(0),
    );
    assert!(n_svc > 5 && n_new > 5, "the probes ran during the move");
    assert!(
        ok_svc.is_empty(),
        "manager reached the API server through its ClusterIP during the move: {ok_svc:?}"
    );
    assert!(
        ok_new.iter().all(|t| *t < enforced),
        "manager reached the new endpoint after every agent had it: {ok_new:?} (enforced at {enforced})"
    );
    // After the move: denied at the new address and through the Service; the other
    // pod reaches the API server at both.
    for to in [api_svc, api_new, imds_addr] {
        assert!(!connects(&manager, to), "manager -> {to} after the move");
        assert!(connects(&other, to), "other -> {to} after the move");
    }
    assert!(
        connects(&manager, peer_svc),
        "manager's allowed Service traffic still passes"
    );
    eprintln!("seed 002 test: {:.1} s", started.elapsed().as_secs_f64());
}
