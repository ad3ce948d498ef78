//! `palisade lab upgrade`: the agents of a `--kubernetes` lab replaced under traffic,
//! node after node and round after round, as a DaemonSet rollout of a new chart
//! revision replaces their pods (issue 10: "established connections survive, no
//! denied packet passes (run it 20 times)").
//!
//! Every node restart must show, or the run fails:
//! 1. the agent is replaced (SIGTERM, the init container's `palisade-cni install`,
//!    which must leave the node's CNI configuration byte for byte as it was, then a
//!    new process: `kube_lab::restart_agent`);
//! 2. the programs are replaced: on every pod interface of the node the kernel runs,
//!    first on each hook, the new agent's program, whose id none of the interfaces
//!    ran before the restart (read from the kernel: TCX program query);
//! 3. long-lived allowed TCP connections, same node and across nodes, survive (no
//!    reset, no end of stream) and echo data again after the restart.
//!
//! Over the whole run the denied probers (a datagram every millisecond, same node
//! and across nodes) get nothing through, while an allowed control sender's
//! datagrams keep arriving at the same receivers (so "nothing arrived" is not a
//! broken receiver).
//!
//! The traffic's endpoints are sockets of this process, each opened inside a pod's
//! network namespace (a socket stays in the namespace it was created in): packets
//! cross the pods' interfaces, the programs under test and the lab's routed network
//! as the pods' own would.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use palisade_lab::netns::NetNs;
use serde::Serialize;

use crate::kube_lab;

/// The workload's namespace.
const NAMESPACE: &str = "palisade-upgrade";
/// The allowed TCP service on the server pods.
const TCP_PORT: u16 = 9000;
/// The UDP port of the receivers (the denied target pods).
const UDP_PORT: u16 = 9100;
/// Pause between two echoed chunks of a connection.
const ECHO_EVERY: Duration = Duration::from_millis(5);
/// Pause between two datagrams of a denied prober (the issue's 1 ms).
const PROBE_EVERY: Duration = Duration::from_millis(1);
/// Pause between two datagrams of the allowed control sender.
const CONTROL_EVERY: Duration = Duration::from_millis(10);
/// A connection without an echo for this long counts as broken (TCP retransmits
/// through a short gap; a reset or a flushed flow never comes back).
const MAX_STALL: Duration = Duration::from_secs(5);
/// How long after its restart a node has to run the new programs on every pod
/// interface, and the connections to echo again.
const REPLACED_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the traffic has to be flowing before the first round.
const BASELINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The workload: on the first two nodes A and B, a client with servers on A and B,
/// receivers on A and B, probers on A and B (each sends to both receivers: denied),
/// a control sender on A (allowed to both receivers).
fn workload(a: &str, b: &str) -> String {
    let pod = |name: &str, app: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: {app}}}}}\n\
             spec:\n  nodeName: {node}\n  containers: [{{name: c, image: lab}}]\n---\n"
        )
    };
    let mut out =
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n---\n");
    for (name, app, node) in [
        ("client", "client", a),
        ("server-a", "server", a),
        ("server-b", "server", b),
        ("receiver-a", "receiver", a),
        ("receiver-b", "receiver", b),
        ("prober-a", "prober", a),
        ("prober-b", "prober", b),
        ("control", "control", a),
    ] {
        out.push_str(&pod(name, app, node));
    }
    out.push_str(&format!(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: servers, namespace: {NAMESPACE}}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
    ports: [{{protocol: TCP, port: {TCP_PORT}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: receivers, namespace: {NAMESPACE}}}
spec:
  podSelector: {{matchLabels: {{app: receiver}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: control}}}}}}]
    ports: [{{protocol: UDP, port: {UDP_PORT}}}]
"#
    ));
    out
}

/// One node's restart in a round.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRestart {
    /// The node.
    pub node: String,
    /// From SIGTERM to the new agent's programs on every pod interface of the node.
    pub replaced_ms: u64,
    /// The program ids the kernel ran on the node's pod interfaces before, and after.
    pub programs_before: BTreeSet<u32>,
    /// After (the new agent's `from_pod` and `to_pod`).
    pub programs_after: BTreeSet<u32>,
    /// Pod interfaces checked.
    pub interfaces: usize,
}

/// One long-lived connection over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionReport {
    /// `client -> server`.
    pub name: String,
    /// Whether both ends are on one node.
    pub same_node: bool,
    /// Chunks echoed.
    pub echoes: u64,
    /// The longest time between two echoes, in milliseconds.
    pub max_gap_ms: u64,
    /// Why it broke, if it did.
    pub error: Option<String>,
}

/// One sender over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct FlowReport {
    /// `sender -> receiver`.
    pub name: String,
    /// Whether the policy allows it.
    pub allowed: bool,
    /// Datagrams sent (to this receiver).
    pub sent: u64,
    /// Datagrams that arrived.
    pub received: u64,
}

/// What `lab upgrade` measured.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    /// Rounds run (each restarts every node once).
    pub rounds: usize,
    /// Every restart, in order.
    pub restarts: Vec<(usize, NodeRestart)>,
    /// The long-lived connections.
    pub connections: Vec<ConnectionReport>,
    /// The datagram flows.
    pub flows: Vec<FlowReport>,
    /// Every way the run failed; empty when it passed.
    pub failures: Vec<String>,
}

/// A connection's counters, shared with its pump thread.
#[derive(Default)]
struct ConnStats {
    echoes: AtomicU64,
    max_gap_us: AtomicU64,
    error: Mutex<Option<String>>,
}

/// A sender's counter per destination, and a receiver's per source address.
type Counts = Arc<Mutex<BTreeMap<IpAddr, u64>>>;

/// The sockets and threads of the traffic; the threads stop when `stop` is set.
struct Traffic {
    stop: Arc<AtomicBool>,
    conns: Vec<(String, bool, Arc<ConnStats>)>,
    /// (sender name, its address, allowed, per-destination sent counts).
    senders: Vec<(String, IpAddr, bool, Counts)>,
    /// (receiver name, its address, per-source received counts).
    receivers: Vec<(String, IpAddr, Counts)>,
}

/// A pod of the workload: its namespace and IPv4 address.
#[derive(Clone)]
struct Pod {
    netns: String,
    ip: IpAddr,
}

fn in_pod<R: Send>(pod: &Pod, f: impl FnOnce() -> std::io::Result<R> + Send) -> anyhow::Result<R> {
    Ok(NetNs::open(&pod.netns).run_in(f)??)
}

/// An echo server: every accepted connection gets its bytes back.
fn serve_echo(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// Sends a numbered chunk, reads it back, again and again, until `stop`.
fn pump(mut c: TcpStream, stats: Arc<ConnStats>, stop: Arc<AtomicBool>) {
    let fail = |stats: &ConnStats, e: String| {
        *stats.error.lock().expect("not poisoned") = Some(e);
    };
    if let Err(e) = c.set_read_timeout(Some(MAX_STALL)) {
        return fail(&stats, format!("setting the read timeout: {e}"));
    }
    let mut last = Instant::now();
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        if let Err(e) = c.write_all(&seq.to_be_bytes()) {
            return fail(&stats, format!("write of chunk {seq}: {e}"));
        }
        let mut back = [0u8; 8];
        match c.read_exact(&mut back) {
            Ok(()) if u64::from_be_bytes(back) == seq => {}
            Ok(()) => return fail(&stats, format!("chunk {seq} came back altered")),
            Err(e) => {
                return fail(
                    &stats,
                    format!(
                        "no echo of chunk {seq} ({e}; last echo {} ms before)",
                        last.elapsed().as_millis()
                    ),
                )
            }
        }
        let gap = last.elapsed().as_micros() as u64;
        stats.max_gap_us.fetch_max(gap, Ordering::Relaxed);
        stats.echoes.fetch_add(1, Ordering::Relaxed);
        last = Instant::now();
        std::thread::sleep(ECHO_EVERY);
    }
}

/// Counts every datagram arriving at `s` by source address, until `stop`.
fn receive(s: UdpSocket, counts: Counts, stop: Arc<AtomicBool>) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = s.recv_from(&mut buf) {
            *counts
                .lock()
                .expect("not poisoned")
                .entry(from.ip())
                .or_default() += 1;
        }
    }
}

/// Sends a datagram to each of `to` every `every` (on a fixed schedule, so a late
/// wake-up is caught up rather than lost), counting them, until `stop`.
fn send(s: UdpSocket, to: Vec<SocketAddr>, every: Duration, counts: Counts, stop: Arc<AtomicBool>) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for dst in &to {
            if s.send_to(b"palisade-upgrade-probe", dst).is_ok() {
                *counts
                    .lock()
                    .expect("not poisoned")
                    .entry(dst.ip())
                    .or_default() += 1;
            }
        }
        next += every;
        // Pacing, not synchronisation: the schedule of a 1 ms prober.
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

impl Traffic {
    fn start(pods: &BTreeMap<String, Pod>) -> anyhow::Result<Traffic> {
        let get = |n: &str| {
            pods.get(n)
                .cloned()
                .with_context(|| format!("pod {NAMESPACE}/{n} is not running"))
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut t = Traffic {
            stop: stop.clone(),
            conns: Vec::new(),
            senders: Vec::new(),
            receivers: Vec::new(),
        };
        let client = get("client")?;
        for (server, same_node) in [("server-a", true), ("server-b", false)] {
            let s = get(server)?;
            let listener = in_pod(&s, || TcpListener::bind(("0.0.0.0", TCP_PORT)))
                .with_context(|| format!("listening in {server}"))?;
            serve_echo(listener);
            let to = SocketAddr::new(s.ip, TCP_PORT);
            // Two connections per server: one is not a sample.
            for k in 0..2 {
                let c = in_pod(&client, || TcpStream::connect_timeout(&to, MAX_STALL))
                    .with_context(|| format!("client connecting to {server} at {to}"))?;
                let stats = Arc::new(ConnStats::default());
                let (st, sp) = (stats.clone(), stop.clone());
                std::thread::spawn(move || pump(c, st, sp));
                t.conns
                    .push((format!("client -> {server} #{k}"), same_node, stats));
            }
        }
        let mut receivers = Vec::new();
        for name in ["receiver-a", "receiver-b"] {
            let r = get(name)?;
            let s = in_pod(&r, || UdpSocket::bind(("0.0.0.0", UDP_PORT)))
                .with_context(|| format!("binding in {name}"))?;
            let counts = Counts::default();
            let (c, sp) = (counts.clone(), stop.clone());
            std::thread::spawn(move || receive(s, c, sp));
            receivers.push(SocketAddr::new(r.ip, UDP_PORT));
            t.receivers.push((name.to_string(), r.ip, counts));
        }
        for (name, allowed, every) in [
            ("prober-a", false, PROBE_EVERY),
            ("prober-b", false, PROBE_EVERY),
            ("control", true, CONTROL_EVERY),
        ] {
            let p = get(name)?;
            let s = in_pod(&p, || UdpSocket::bind(("0.0.0.0", 0)))
                .with_context(|| format!("binding in {name}"))?;
            let counts = Counts::default();
            let (c, sp, to) = (counts.clone(), stop.clone(), receivers.clone());
            std::thread::spawn(move || send(s, to, every, c, sp));
            t.senders.push((name.to_string(), p.ip, allowed, counts));
        }
        Ok(t)
    }

    fn echoes(&self) -> Vec<u64> {
        self.conns
            .iter()
            .map(|(_, _, s)| s.echoes.load(Ordering::Relaxed))
            .collect()
    }

    fn broken(&self) -> Vec<String> {
        self.conns
            .iter()
            .filter_map(|(n, _, s)| {
                let e = s.error.lock().expect("not poisoned").clone()?;
                Some(format!("{n}: {e}"))
            })
            .collect()
    }

    fn flows(&self) -> Vec<FlowReport> {
        let mut out = Vec::new();
        for (sender, from, allowed, sent) in &self.senders {
            for (receiver, to, got) in &self.receivers {
                out.push(FlowReport {
                    name: format!("{sender} -> {receiver}"),
                    allowed: *allowed,
                    sent: sent
                        .lock()
                        .expect("not poisoned")
                        .get(to)
                        .copied()
                        .unwrap_or(0),
                    received: got
                        .lock()
                        .expect("not poisoned")
                        .get(from)
                        .copied()
                        .unwrap_or(0),
                });
            }
        }
        out
    }

    /// Waits until every connection echoed past `since` (its counts then), or a
    /// connection broke, or `within` passed; returns what is still missing.
    fn wait_flowing(&self, since: &[u64], within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.echoes();
            let mut missing: Vec<String> = self
                .conns
                .iter()
                .zip(now.iter().zip(since))
                .filter(|(_, (n, s))| n <= s)
                .map(|((name, ..), _)| format!("{name}: no echo"))
                .collect();
            missing.extend(self.broken());
            if missing.is_empty() || Instant::now() > deadline || !self.broken().is_empty() {
                return missing;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The program ids on every hook of every pod interface the node's agent has
/// registered (the kernel's TCX query), and the agent's own ids for the hooks.
fn programs(socket: &Path) -> anyhow::Result<(usize, BTreeSet<u32>, BTreeSet<u32>)> {
    let status = crate::inspect::call(socket, &palisade_agent::api::Status)?.data;
    let (mut running, mut ours) = (BTreeSet::new(), BTreeSet::new());
    let mut interfaces = 0;
    for pod in status.endpoints.keys() {
        let v =
            crate::inspect::call(socket, &palisade_agent::api::Endpoint { pod: pod.clone() })?.data;
        match v.attachment {
            palisade_agent::api::KernelRead::Read(a) => {
                interfaces += 1;
                for h in a.hooks {
                    // First on the hook: what decides the interface's packets.
                    running.extend(h.programs.first());
                    ours.insert(h.ours);
                }
            }
            palisade_agent::api::KernelRead::Failed { error } => {
                bail!("reading {pod}'s attachment: {error}")
            }
        }
    }
    Ok((interfaces, running, ours))
}

/// `lab upgrade --rounds N [--agent PALISADE]` on lab `name`.
pub fn run(name: &str, rounds: usize, agent: Option<&Path>) -> anyhow::Result<UpgradeReport> {
    let mut lab = kube_lab::open(name)?;
    if lab.nodes.len() < 2 {
        bail!("lab upgrade needs a lab of at least 2 nodes (same-node and cross-node traffic)");
    }
    let (a, b) = (lab.nodes[0].net.name.clone(), lab.nodes[1].net.name.clone());
    let file = crate::lab::state_dir(name).join("upgrade-workload.yaml");
    std::fs::write(&file, workload(&a, &b)).with_context(|| format!("{}", file.display()))?;
    kube_lab::apply(name, std::slice::from_ref(&file)).context("applying the workload")?;
    let prefix = format!("{NAMESPACE}/");
    let pods: BTreeMap<String, Pod> = kube_lab::endpoints(&lab)?
        .into_iter()
        .filter_map(|e| {
            let name = e.key.strip_prefix(&prefix)?.to_string();
            let ip = *e.ips.iter().find(|ip| ip.is_ipv4())?;
            Some((name, Pod { netns: e.netns, ip }))
        })
        .collect();
    let traffic = Traffic::start(&pods)?;
    let mut failures = Vec::new();
    // Before any restart: the connections echo and the control's datagrams arrive.
    let missing = traffic.wait_flowing(&vec![0; traffic.conns.len()], BASELINE_TIMEOUT);
    if !missing.is_empty() {
        bail!(
            "the traffic does not flow before the first restart: {}",
            missing.join("; ")
        );
    }
    let mut restarts = Vec::new();
    let conflist_of: Vec<std::path::PathBuf> = lab
        .nodes
        .iter()
        .map(|n| kube_lab::cni_paths(n).0.join(kube_lab::NODE_CONFLIST))
        .collect();
    'rounds: for round in 1..=rounds {
        for (i, conflist_path) in conflist_of.iter().enumerate() {
            let node = lab.nodes[i].net.name.clone();
            let socket = lab.nodes[i].socket.clone();
            let (_, before, _) = programs(&socket)?;
            let conflist = std::fs::read(conflist_path).context("the node's CNI list")?;
            let t0 = Instant::now();
            kube_lab::restart_agent(&mut lab, i, agent)
                .with_context(|| format!("round {round}: restarting the agent of {node}"))?;
            let deadline = t0 + REPLACED_TIMEOUT;
            let replaced = loop {
                let (n, running, ours) = programs(&socket)?;
                if running == ours && running.is_disjoint(&before) {
                    break Some((n, running));
                }
                if Instant::now() > deadline {
                    failures.push(format!(
                        "round {round}, {node}: programs not replaced after {}s: ran {before:?}, now {running:?}, the new agent's {ours:?}",
                        REPLACED_TIMEOUT.as_secs()
                    ));
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let replaced_ms = t0.elapsed().as_millis() as u64;
            // The new pod's init container re-chained with the same options: no byte of
            // the node's configuration changed.
            if std::fs::read(conflist_path).ok().as_ref() != Some(&conflist) {
                failures.push(format!(
                    "round {round}, {node}: the re-chaining changed {}",
                    conflist_path.display()
                ));
            }
            let since = traffic.echoes();
            let missing = traffic.wait_flowing(&since, REPLACED_TIMEOUT);
            for m in &missing {
                failures.push(format!("round {round}, after {node}'s restart: {m}"));
            }
            let denied: u64 = traffic
                .flows()
                .iter()
                .filter(|f| !f.allowed)
                .map(|f| f.received)
                .sum();
            if denied > 0 {
                failures.push(format!(
                    "round {round}, after {node}'s restart: {denied} denied datagrams arrived"
                ));
            }
            if let Some((interfaces, after)) = replaced {
                eprintln!(
                    "round {round}/{rounds}: {node}: programs {before:?} -> {after:?} on {interfaces} interfaces in {replaced_ms} ms"
                );
                restarts.push((
                    round,
                    NodeRestart {
                        node,
                        replaced_ms,
                        programs_before: before,
                        programs_after: after,
                        interfaces,
                    },
                ));
            }
            if !failures.is_empty() {
                break 'rounds;
            }
        }
    }
    let flows = traffic.flows();
    for f in &flows {
        if f.sent == 0 {
            failures.push(format!("{}: nothing was sent", f.name));
        }
        if f.allowed && f.received == 0 {
            failures.push(format!("{}: allowed, but nothing arrived", f.name));
        }
    }
    let connections = traffic
        .conns
        .iter()
        .map(|(name, same_node, s)| ConnectionReport {
            name: name.clone(),
            same_node: *same_node,
            echoes: s.echoes.load(Ordering::Relaxed),
            max_gap_ms: s.max_gap_us.load(Ordering::Relaxed) / 1000,
            error: s.error.lock().expect("not poisoned").clone(),
        })
        .collect();
    drop(traffic);
    Ok(UpgradeReport {
        rounds,
        restarts,
        connections,
        flows,
        failures,
    })
}

/// The report as a table.
pub fn render(r: &UpgradeReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let times: Vec<u64> = r.restarts.iter().map(|(_, n)| n.replaced_ms).collect();
    let _ = writeln!(
        out,
        "{} restarts in {} rounds; programs replaced on every pod interface within {} ms (median {} ms)",
        r.restarts.len(),
        r.rounds,
        times.iter().max().copied().unwrap_or(0),
        {
            let mut t = times.clone();
            t.sort_unstable();
            t.get(t.len() / 2).copied().unwrap_or(0)
        }
    );
    let _ = writeln!(out, "\nCONNECTION  SAME-NODE  ECHOES  MAX-GAP-MS  ERROR");
    for c in &r.connections {
        let _ = writeln!(
            out,
            "{}  {}  {}  {}  {}",
            c.name,
            c.same_node,
            c.echoes,
            c.max_gap_ms,
            c.error.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "\nFLOW  ALLOWED  SENT  RECEIVED");
    for f in &r.flows {
        let _ = writeln!(out, "{}  {}  {}  {}", f.name, f.allowed, f.sent, f.received);
    }
    if r.failures.is_empty() {
        let _ = writeln!(
            out,
            "\nupgrade under traffic: passed (every connection survived, no denied datagram arrived)"
        );
    } else {
        let _ = writeln!(out, "\nupgrade under traffic: FAILED");
        for f in &r.failures {
            let _ = writeln!(out, "  {f}");
        }
    }
    out
}
