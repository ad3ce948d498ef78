//! Compiler benchmark: full compile time and peak memory on synthetic clusters, and the
//! cost of one pod change as the cluster grows.
//!
//! ```text
//! cargo bench -p palisade-policy --bench compile            # full: 10k pods x 10k policies
//! cargo bench -p palisade-policy --bench compile -- --quick # small sizes, short runs
//! PALISADE_BENCH_QUICK=1 cargo bench -p palisade-policy --bench compile
//! PALISADE_BENCH_COMPILE_ONLY=1 PALISADE_BENCH_SIZE=10000 PALISADE_BENCH_POLICIES=10000 \
//!     cargo bench -p palisade-policy --bench compile     # full compile only, any size
//! ```
//!
//! Shapes:
//!
//! - **A** (one policy per app): ~100 namespaces, one app per policy, each policy selects
//!   its app, admits another app of its namespace on 8080/TCP and the monitoring
//!   namespace (two Prometheus pods) on 9090/TCP, and lets the app reach the following app, DNS in
//!   kube-system, and the internet except the metadata service.
//! - **B** (broad selectors): the same pods labelled by tier and team; policies select
//!   a whole tier of a namespace and admit tiers of every namespace of a team (a
//!   namespaceSelector AND a podSelector), so each pod is selected by many policies
//!   and each rule peer matches many pods.
//!
//! Goals (one core): full compile of 10k pods x 10k policies <= 1 s; one pod change
//! <= 1 ms whatever the pod count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use palisade_policy::compile::{compile, Compiler};
use palisade_policy::model::{
    Action, Cluster, ClusterPeer, ClusterPolicy, ClusterPolicyKind, ClusterRule, ContainerPort,
    IpBlock, Namespace, NamespaceMatch, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule, Pod,
    PortMatch, Protocol, Subject, Tier, NAMESPACE_NAME_LABEL,
};
use palisade_policy::selector::{LabelSelector, Labels};

/// Counts live heap bytes and their high-water mark, to report peak memory.
struct CountingAlloc;

/// Bytes currently allocated.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// High-water mark of `CURRENT` since the last [`reset_peak`], in bytes.
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` unchanged and only updates counters.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// Namespaces in both shapes.
const NAMESPACES: usize = 100;
/// Teams in shape B (namespaces are assigned round-robin).
const TEAMS: usize = 20;
/// Tiers in shape B.
const TIERS: [&str; 5] = ["web", "api", "db", "cache", "batch"];

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn tcp(port: u16) -> Vec<PortMatch> {
    vec![PortMatch::Range {
        protocol: Protocol::Tcp,
        port,
        end_port: port,
    }]
}

fn ips(i: usize) -> Vec<IpAddr> {
    let i = i as u32;
    vec![
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)),
        IpAddr::V6(Ipv6Addr::from(
            0xfd00_0000_0000_0000_0000_0000_0000_0000u128 | i as u128,
        )),
    ]
}

fn namespace(n: usize) -> Namespace {
    let name = format!("ns{n}");
    let mut l = labels(&[("team", format!("t{}", n % TEAMS))]);
    l.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    Namespace { name, labels: l }
}

fn base_cluster() -> Cluster {
    let mut c = Cluster::default();
    for n in 0..NAMESPACES {
        let ns = namespace(n);
        c.namespaces.insert(ns.name.clone(), ns);
    }
    for (name, purpose) in [("kube-system", "system"), ("monitoring", "monitoring")] {
        let ns = Namespace {
            name: name.into(),
            labels: labels(&[
                (NAMESPACE_NAME_LABEL, name.to_string()),
                ("purpose", purpose.to_string()),
            ]),
        };
        c.namespaces.insert(ns.name.clone(), ns);
    }
    // The metadata-service guard of seeds/002, for every pod.
    let guard = ClusterPolicy {
        kind: ClusterPolicyKind::ClusterNetworkPolicy,
        name: "deny-metadata".into(),
        tier: Tier::Admin,
        priority: 10,
        subject: Subject::Namespaces(LabelSelector::everything()),
        ingress: Vec::new(),
        egress: vec![ClusterRule {
            name: "metadata".into(),
            action: Action::Deny,
            peers: vec![ClusterPeer::Networks(vec!["169.254.169.254/32"
                .parse()
                .unwrap()])],
            ports: None,
        }],
    };
    c.cluster_policies
        .insert("ClusterNetworkPolicy/deny-metadata".into(), guard);
    for i in 0..2 {
        let prometheus = Pod {
            namespace: "monitoring".into(),
            name: format!("prometheus-{i}"),
            labels: labels(&[("app", "prometheus".into())]),
            ports: Vec::new(),
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 255, 1, 10 + i))],
            host_network: false,
            node_name: None,
            service_account: "default".into(),
        };
        c.pods.insert(prometheus.key(), prometheus);
        let dns = Pod {
            namespace: "kube-system".into(),
            name: format!("coredns-{i}"),
            labels: labels(&[("k8s-app", "kube-dns".into())]),
            ports: Vec::new(),
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 255, 0, 10 + i))],
            host_network: false,
            node_name: None,
            service_account: "default".into(),
        };
        c.pods.insert(dns.key(), dns);
    }
    c
}

/// Shape A pod `i` of `apps` apps.
fn pod_a(i: usize, apps: usize) -> Pod {
    let app = i % apps;
    Pod {
        namespace: format!("ns{}", app % NAMESPACES),
        name: format!("app{app}-{i}"),
        labels: labels(&[("app", format!("app{app}")), ("tier", "web".into())]),
        ports: vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        ips: ips(i + 1),
        host_network: false,
        node_name: None,
        service_account: "default".into(),
    }
}

fn shape_a(pods: usize, policies: usize) -> Cluster {
    let mut c = base_cluster();
    let apps = policies.max(1);
    for i in 0..pods {
        let p = pod_a(i, apps);
        c.pods.insert(p.key(), p);
    }
    let app_sel = |a: usize| LabelSelector::from_labels([("app", format!("app{}", a % apps))]);
    for a in 0..policies {
        let ns = format!("ns{}", a % NAMESPACES);
        let np = NetworkPolicy {
            namespace: ns.clone(),
            name: format!("app{a}"),
            pod_selector: app_sel(a),
            ingress: Some(vec![
                NetworkPolicyRule {
                    peers: Some(vec![NetworkPolicyPeer::Pods {
                        namespaces: NamespaceMatch::Named(ns.clone()),
                        pods: app_sel(a + NAMESPACES),
                    }]),
                    ports: Some(tcp(8080)),
                },
                NetworkPolicyRule {
                    peers: Some(vec![NetworkPolicyPeer::Pods {
                        namespaces: NamespaceMatch::Selector(LabelSelector::from_labels([(
                            "purpose",
                            "monitoring",
                        )])),
                        pods: LabelSelector::everything(),
                    }]),
                    ports: Some(tcp(9090)),
                },
            ]),
            egress: Some(vec![
                NetworkPolicyRule {
                    peers: Some(vec![NetworkPolicyPeer::Pods {
                        namespaces: NamespaceMatch::Named(ns.clone()),
                        pods: app_sel(a + 2 * NAMESPACES),
                    }]),
                    ports: Some(vec![PortMatch::Named {
                        protocol: Protocol::Tcp,
                        name: "http".into(),
                    }]),
                },
                NetworkPolicyRule {
                    peers: Some(vec![NetworkPolicyPeer::Pods {
                        namespaces: NamespaceMatch::Named("kube-system".into()),
                        pods: LabelSelector::from_labels([("k8s-app", "kube-dns")]),
                    }]),
                    ports: Some(vec![PortMatch::Range {
                        protocol: Protocol::Udp,
                        port: 53,
                        end_port: 53,
                    }]),
                },
                NetworkPolicyRule {
                    peers: Some(vec![NetworkPolicyPeer::IpBlock(IpBlock {
                        cidr: "0.0.0.0/0".parse().unwrap(),
                        except: vec!["10.0.0.0/8".parse().unwrap()],
                    })]),
                    ports: Some(tcp(443)),
                },
            ]),
        };
        c.network_policies.insert(format!("{ns}/app{a}"), np);
    }
    c
}

/// Shape B pod `i`.
fn pod_b(i: usize) -> Pod {
    let n = i % NAMESPACES;
    let tier = TIERS[(i / NAMESPACES) % TIERS.len()];
    Pod {
        namespace: format!("ns{n}"),
        name: format!("p{i}"),
        labels: labels(&[
            ("tier", tier.to_string()),
            ("team", format!("t{}", n % TEAMS)),
        ]),
        ports: Vec::new(),
        ips: ips(i + 1),
        host_network: false,
        node_name: None,
        service_account: "default".into(),
    }
}

fn shape_b(pods: usize, policies: usize) -> Cluster {
    let mut c = base_cluster();
    for i in 0..pods {
        let p = pod_b(i);
        c.pods.insert(p.key(), p);
    }
    for k in 0..policies {
        let n = k % NAMESPACES;
        let ns = format!("ns{n}");
        let tier = TIERS[(k / NAMESPACES) % TIERS.len()];
        let from_tier = TIERS[(k / NAMESPACES + 1) % TIERS.len()];
        let team = (k / (NAMESPACES * TIERS.len())) % TEAMS;
        let port = 8000 + (k % 50) as u16;
        let np = NetworkPolicy {
            namespace: ns.clone(),
            name: format!("np{k}"),
            pod_selector: LabelSelector::from_labels([("tier", tier)]),
            ingress: Some(vec![NetworkPolicyRule {
                peers: Some(vec![NetworkPolicyPeer::Pods {
                    namespaces: NamespaceMatch::Selector(LabelSelector::from_labels([(
                        "team",
                        format!("t{team}"),
                    )])),
                    pods: LabelSelector::from_labels([("tier", from_tier)]),
                }]),
                ports: Some(vec![PortMatch::Range {
                    protocol: Protocol::Tcp,
                    port,
                    end_port: port + 10,
                }]),
            }]),
            egress: None,
        };
        c.network_policies.insert(format!("{ns}/np{k}"), np);
    }
    c
}

/// Time this thread has spent on a CPU, in nanoseconds (Linux `schedstat`), so that
/// figures stay meaningful on a shared, oversubscribed machine. `None` elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Full compile: best of `runs` wall times, peak heap above the input cluster.
fn report_full_compile(shape: &str, cluster: &Cluster, runs: usize) {
    let mut best = Duration::MAX;
    let mut best_cpu = u64::MAX;
    let mut peak = 0;
    let mut summary = String::new();
    for _ in 0..runs {
        let base = reset_peak();
        let cpu = thread_cpu_ns();
        let t = Instant::now();
        let compiled = compile(cluster);
        best = best.min(t.elapsed());
        if let (Some(a), Some(b)) = (cpu, thread_cpu_ns()) {
            best_cpu = best_cpu.min(b - a);
        }
        peak = peak.max(PEAK.load(Ordering::Relaxed) - base);
        let entries: usize = compiled.tables.values().map(|t| t.entries.len()).sum();
        summary = format!(
            "identities={} tables={} entries={} addresses={}",
            compiled.identities.len(),
            compiled.tables.len(),
            entries,
            compiled.addresses.len()
        );
        drop(black_box(compiled));
    }
    println!(
        "full compile shape {shape}: pods={} policies={} wall={:.1} ms cpu={:.1} ms peak_heap={:.1} MiB {summary}",
        cluster.pods.len(),
        cluster.network_policies.len(),
        best.as_secs_f64() * 1e3,
        best_cpu as f64 / 1e6,
        mib(peak)
    );
}

fn quick() -> bool {
    std::env::var_os("PALISADE_BENCH_QUICK").is_some() || std::env::args().any(|a| a == "--quick")
}

/// Per-change costs on a compiler of `pods` pods (shape A, `pods/10` policies capped at
/// 10k): a new replica of an existing app, a pod of a brand-new app, a label change, and
/// a NetworkPolicy edit.
fn bench_pod_changes(c: &mut Criterion, pods: usize) {
    let policies = (pods / 10).clamp(100, 10_000);
    let apps = policies;
    let t = Instant::now();
    let mut comp = Compiler::new(shape_a(pods, policies));
    println!(
        "setup: Compiler::new shape A pods={pods} policies={policies}: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut group = c.benchmark_group("pod_change");
    let mut fresh = pods + 10;
    group.bench_function(BenchmarkId::new("add_replica", pods), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut p = pod_a(7, apps);
                p.name = format!("replica-{fresh}");
                p.ips = ips(fresh);
                fresh += 1;
                let key = p.key();
                let t = Instant::now();
                black_box(comp.upsert_pod(p));
                total += t.elapsed();
                comp.remove_pod(&key);
            }
            total
        })
    });
    group.bench_function(BenchmarkId::new("add_new_app", pods), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut p = pod_a(7, apps);
                p.name = format!("new-{fresh}");
                p.labels.insert("app".into(), format!("brand-new-{fresh}"));
                p.ips = ips(fresh);
                fresh += 1;
                let key = p.key();
                let t = Instant::now();
                black_box(comp.upsert_pod(p));
                total += t.elapsed();
                comp.remove_pod(&key);
            }
            total
        })
    });
    let mut p = pod_a(7, apps);
    let (from, to) = (p.labels["app"].clone(), format!("app{}", (7 + 1) % apps));
    let mut flip = false;
    group.bench_function(BenchmarkId::new("label_change", pods), |b| {
        b.iter(|| {
            flip = !flip;
            p.labels
                .insert("app".into(), if flip { to.clone() } else { from.clone() });
            black_box(comp.upsert_pod(p.clone()))
        })
    });
    // A NetworkPolicy edit (a port toggled): re-keys the pods the policy selects.
    let key = "ns7/app7".to_string();
    let mut np = comp.cluster().network_policies[&key].clone();
    let mut flip = false;
    group.bench_function(BenchmarkId::new("network_policy_change", pods), |b| {
        b.iter(|| {
            flip = !flip;
            if let Some(rules) = np.ingress.as_mut() {
                rules[0].ports = Some(tcp(if flip { 8081 } else { 8080 }));
            }
            black_box(comp.upsert_network_policy(np.clone()))
        })
    });
    group.finish();
}

fn main() {
    let quick = quick();
    let full = std::env::var("PALISADE_BENCH_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2_000 } else { 10_000 });
    let runs = if quick { 1 } else { 3 };
    let policies = std::env::var("PALISADE_BENCH_POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(full);
    for (shape, cluster) in [
        ("A", shape_a(full, policies)),
        ("B", shape_b(full, policies)),
    ] {
        report_full_compile(shape, &cluster, runs);
    }
    if std::env::var_os("PALISADE_BENCH_COMPILE_ONLY").is_some() {
        return;
    }
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(if quick { 1 } else { 3 }));
    let sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    for &pods in sizes {
        bench_pod_changes(&mut c, pods);
    }
    c.final_summary();
}
