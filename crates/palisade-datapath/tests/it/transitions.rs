//! Write-by-write differential test: the kernel never holds a mix of two states.
//!
//! A random cluster evolves through random changes (pods relabelled, added, removed;
//! namespaces relabelled; policies of every kind added, replaced, removed). Each
//! reconcile pass is applied the way the agent applies it (one merged delta; a forced
//! full pass; a restart adopting the previous run's maps; a full pass after a failed
//! one), and after **every single map write** the production program is run
//! (BPF_PROG_TEST_RUN) on probe packets for every pod: each verdict must equal the
//! reference evaluator's answer for the state before the pass or for the state after
//! it, never anything else. A pod that exists on only one side may also be dropped
//! (no endpoint: fail closed).

use std::collections::BTreeMap;
use std::net::IpAddr;

use palisade_datapath::abi::{Config, CFG_F_NO_CT_CREATE, LOG_OFF, TC_ACT_SHOT, TC_ACT_UNSPEC};
use palisade_datapath::packet::Packet;
use palisade_datapath::{Datapath, Hook, MapSizes};
use palisade_policy::compile::{changes_between, merge, Compiler};
use palisade_policy::model::*;
use palisade_policy::verdict::{evaluate_side, Peer};

use crate::cluster_differential::{labels, random_cluster, random_l4, APPS, OUTSIDE};
use crate::common::{Rng, TestDp};

/// Fake ifindexes of bound pods start here; the probe copies one to ifindex 1.
const IFINDEX_BASE: u32 = 1000;

struct Probe {
    pod: String,
    dir: Direction,
    peer: IpAddr,
    proto: u8,
    port: u16,
    frame: Vec<u8>,
}

/// One change to `c`, drawn at random.
fn mutate(c: &Cluster, rng: &mut Rng, next_pod: &mut u8) -> Cluster {
    let mut c = c.clone();
    let other = random_cluster(rng);
    match rng.below(8) {
        0 => {
            // Relabel a pod.
            if let Some(k) = c
                .pods
                .keys()
                .nth(rng.below(c.pods.len() as u64) as usize)
                .cloned()
            {
                let p = c.pods.get_mut(&k).unwrap();
                p.labels = labels(&[("app", *rng.pick(&APPS))]);
            }
        }
        1 => {
            // Remove a pod, or add one with a fresh address.
            if rng.chance(50) && c.pods.len() > 2 {
                let k = c
                    .pods
                    .keys()
                    .nth(rng.below(c.pods.len() as u64) as usize)
                    .cloned()
                    .unwrap();
                c.pods.remove(&k);
            } else {
                let mut pod = other.pods.values().next().unwrap().clone();
                let i = *next_pod;
                *next_pod += 1;
                pod.name = format!("n{i}");
                pod.ips = vec![
                    format!("10.1.0.{}", 20 + i).parse().unwrap(),
                    format!("fd00:1::{}", 20 + i).parse().unwrap(),
                ];
                c.pods.insert(pod.key(), pod);
            }
        }
        2 => {
            // Relabel a namespace.
            let (k, ns) = other.namespaces.iter().nth(rng.below(3) as usize).unwrap();
            c.namespaces.insert(k.clone(), ns.clone());
        }
        3 | 4 => {
            // Add or replace a NetworkPolicy.
            if let Some((k, np)) = other
                .network_policies
                .iter()
                .nth(rng.below(other.network_policies.len().max(1) as u64) as usize)
            {
                c.network_policies.insert(k.clone(), np.clone());
            }
        }
        5 => {
            if let Some(k) = c
                .network_policies
                .keys()
                .nth(rng.below(c.network_policies.len().max(1) as u64) as usize)
                .cloned()
            {
                c.network_policies.remove(&k);
            }
        }
        6 => {
            if let Some((k, cp)) = other
                .cluster_policies
                .iter()
                .nth(rng.below(other.cluster_policies.len().max(1) as u64) as usize)
            {
                c.cluster_policies.insert(k.clone(), cp.clone());
            }
        }
        _ => {
            if let Some(k) = c
                .cluster_policies
                .keys()
                .nth(rng.below(c.cluster_policies.len().max(1) as u64) as usize)
                .cloned()
            {
                c.cluster_policies.remove(&k);
            }
        }
    }
    c
}

/// Probe packets for every pod of `a` or `b`, towards and from random peers.
fn probes(a: &Cluster, b: &Cluster, rng: &mut Rng, per_pod: usize) -> Vec<Probe> {
    let mut pods: BTreeMap<String, &Pod> = BTreeMap::new();
    for p in a.pods.values().chain(b.pods.values()) {
        pods.entry(p.key()).or_insert(p);
    }
    let mut peers: Vec<IpAddr> = pods.values().flat_map(|p| p.ips.iter().copied()).collect();
    peers.extend(OUTSIDE.iter().map(|s| s.parse::<IpAddr>().unwrap()));
    let mut out = Vec::new();
    for pod in pods.values() {
        for _ in 0..per_pod {
            let peer = *rng.pick(&peers);
            let Some(&own) = pod.ips.iter().find(|ip| ip.is_ipv4() == peer.is_ipv4()) else {
                continue;
            };
            if own == peer {
                continue;
            }
            let (l4, proto, port) = random_l4(rng, peer.is_ipv6());
            let dir = if rng.chance(50) {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let (src, dst) = match dir {
                Direction::Egress => (own, peer),
                Direction::Ingress => (peer, own),
            };
            out.push(Probe {
                pod: pod.key(),
                dir,
                peer,
                proto,
                port,
                frame: Packet::new(src, dst, l4).frame(),
            });
        }
    }
    out
}

/// What the reference allows for a probe in `c`; `None` if the pod is not there.
fn reference(c: &Cluster, p: &Probe) -> Option<bool> {
    let pod = c.pods.get(&p.pod).filter(|p| !p.host_network)?;
    Some(evaluate_side(c, pod, p.dir, &Peer::Ip(p.peer), p.proto, p.port).allowed)
}

struct Checker<'a> {
    old: &'a Cluster,
    new: &'a Cluster,
    probes: &'a [Probe],
    ifindex: &'a BTreeMap<String, u32>,
    writes: usize,
    checked: usize,
    failure: Option<String>,
}

impl Checker<'_> {
    fn check(&mut self, dp: &mut Datapath, write: &str, last: bool) {
        self.writes += 1;
        if self.failure.is_some() {
            return;
        }
        let mut current: Option<&str> = None;
        for p in self.probes {
            if current != Some(p.pod.as_str()) {
                dp.copy_endpoint_raw(self.ifindex[&p.pod], 1)
                    .expect("copy endpoint");
                current = Some(p.pod.as_str());
            }
            let hook = match p.dir {
                Direction::Egress => Hook::FromPod,
                Direction::Ingress => Hook::ToPod,
            };
            let (rc, _) = dp.test_run(hook, &p.frame, 1).expect("test_run");
            let got = match rc {
                TC_ACT_UNSPEC => true,
                TC_ACT_SHOT => false,
                x => panic!("rc {x}"),
            };
            let (a, b) = (reference(self.old, p), reference(self.new, p));
            // A pod missing on one side may be dropped (no endpoint entry yet / any more).
            // Once the last write landed, only the new answer is right.
            let ok = b.unwrap_or(false) == got || (!last && a.unwrap_or(false) == got);
            self.checked += 1;
            if !ok {
                self.failure = Some(format!(
                    "after write {} ({write}{}): pod {} {:?} peer {} proto {} port {}: kernel {} but before {:?}, after {:?}",
                    self.writes, if last { ", the last" } else { "" }, p.pod, p.dir, p.peer, p.proto, p.port,
                    if got { "allowed" } else { "dropped" }, a, b
                ));
                return;
            }
        }
    }
}

struct Run {
    rng: Rng,
    seed: u64,
    ifindex: BTreeMap<String, u32>,
    writes: usize,
    checked: usize,
}

impl Run {
    /// Binds every pod of `c` to its fake ifindex (binding records only; the entry is
    /// written when the pod's endpoint is).
    fn bind_all(&mut self, dp: &mut Datapath, c: &Cluster) {
        for k in c.pods.keys() {
            let n = self.ifindex.len() as u32;
            let i = *self.ifindex.entry(k.clone()).or_insert(IFINDEX_BASE + n);
            dp.bind(k, i).expect("bind");
        }
    }

    /// Runs `write` (which writes one pass through `after_write`), checking every write.
    fn pass(
        &mut self,
        what: &str,
        dp: &mut Datapath,
        old: &Cluster,
        new: &Cluster,
        write: impl FnOnce(&mut Datapath, &mut dyn FnMut(&mut Datapath, &str)) -> usize,
    ) {
        self.bind_all(dp, new);
        let probes = probes(old, new, &mut self.rng, 6);
        let mut checker = Checker {
            old,
            new,
            probes: &probes,
            ifindex: &self.ifindex,
            writes: 0,
            checked: 0,
            failure: None,
        };
        // The state before the first write must already be the old one.
        let (new_saved, writes_saved) = (checker.new, 0);
        checker.new = old;
        checker.check(dp, "none yet", false);
        checker.new = new_saved;
        checker.writes = writes_saved;
        let mut log = Vec::new();
        let n = write(dp, &mut |dp, w| {
            log.push(w.to_string());
            checker.check(dp, w, false)
        });
        assert_eq!(n, checker.writes, "every write was checked");
        // After the last write: exactly the new state.
        checker.check(dp, "after the pass", true);
        checker.writes -= 1;
        if checker.failure.is_some() {
            for (i, w) in log.iter().enumerate() {
                eprintln!("write {}: {w}", i + 1);
            }
        }
        if let Some(f) = checker.failure {
            panic!(
                "seed {} {what}: {f}\nbefore: {}\nafter: {}",
                self.seed,
                serde_json::to_string(old).unwrap(),
                serde_json::to_string(new).unwrap()
            );
        }
        self.writes += checker.writes;
        self.checked += checker.checked;
    }
}

#[test]
fn every_single_map_write_leaves_the_old_or_the_new_verdict() {
    let seed = Rng::seed();
    let rounds: usize = std::env::var("PALISADE_TRANSITION_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    println!("transition differential seed {seed} (set PALISADE_DIFF_SEED to replay)");
    let mut run = Run {
        rng: Rng(seed),
        seed,
        ifindex: BTreeMap::new(),
        writes: 0,
        checked: 0,
    };
    let (mut full_writes, mut restart_writes) = (0, 0);
    for _ in 0..rounds {
        run.ifindex.clear();
        let mut t = TestDp::with_sizes(MapSizes {
            policy: 65536,
            ..MapSizes::default()
        });
        t.set_config(Config {
            log_mode: LOG_OFF,
            flags: CFG_F_NO_CT_CREATE,
            ..Config::default()
        })
        .unwrap();
        let dp: &mut Datapath = &mut t;
        let mut cluster = random_cluster(&mut run.rng);
        let mut compiler = Compiler::new(cluster.clone());
        run.bind_all(dp, &cluster);
        dp.sync(compiler.compiled()).expect("initial sync");
        let mut next_pod = 0u8;
        // Incremental passes of one or more changes, one merged delta each.
        for _ in 0..8 {
            let mut next = mutate(&cluster, &mut run.rng, &mut next_pod);
            if run.rng.chance(30) {
                next = mutate(&next, &mut run.rng, &mut next_pod);
            }
            let deltas: Vec<_> = changes_between(compiler.cluster(), &next)
                .into_iter()
                .map(|ch| compiler.apply(ch))
                .collect();
            let delta = merge(deltas);
            run.pass("incremental pass", dp, &cluster, &next, |dp, f| {
                dp.apply_stepwise(&delta, f).expect("apply")
            });
            cluster = next;
        }
        // A forced full pass of the same desired state: nothing may change.
        compiler.rebuild(cluster.clone());
        let before = run.writes;
        run.pass("forced full pass", dp, &cluster, &cluster, |dp, f| {
            dp.sync_stepwise(compiler.compiled(), f).expect("full sync")
        });
        full_writes += run.writes - before;
        // An agent restart: a new compiler takes over the maps it finds.
        let adopted = Compiler::adopting(cluster.clone(), &dp.in_use());
        let before = run.writes;
        run.pass("restart", dp, &cluster, &cluster, |dp, f| {
            dp.sync_stepwise(adopted.compiled(), f)
                .expect("restart sync")
        });
        restart_writes += run.writes - before;
        let mut compiler = adopted;
        // A failed pass (the compiler moved, the kernel did not), then the full pass
        // that follows it.
        let next = mutate(&cluster, &mut run.rng, &mut next_pod);
        for ch in changes_between(compiler.cluster(), &next) {
            compiler.apply(ch);
        }
        let next = mutate(&next, &mut run.rng, &mut next_pod);
        compiler.rebuild(next.clone());
        run.pass("full pass after a failure", dp, &cluster, &next, |dp, f| {
            dp.sync_stepwise(compiler.compiled(), f)
                .expect("sync after failure")
        });
    }
    println!(
        "transition differential: {} writes checked with {} probe verdicts over {rounds} rounds \
         ({full_writes} writes in forced full passes, {restart_writes} in restarts)",
        run.writes, run.checked
    );
    assert!(run.writes > 100, "too few writes checked: {}", run.writes);
}
