//! `bench_datapath`: per-packet cost of the programs, measured in the kernel with
//! `BPF_PROG_TEST_RUN` (the kernel times `repeat` runs of the same packet and
//! reports the mean). Rounds interleave the sizes, and each round keeps its raw
//! figures ([`RoundFigures`]) so that ratios can be taken per round (palisade-bench's
//! `datapath` module); `points` are medians over rounds.
//!
//! What is measured, honestly:
//! - `noop_ns`: the `noop` classifier: the test-run floor (skb setup excluded,
//!   program dispatch included).
//! - `ns_per_packet`: a NEW flow that policy allows, from_pod, TCP SYN. A repeated
//!   packet would hit the conntrack entry its first run created, so the runs set
//!   `PALISADE_CFG_F_NO_CT_CREATE`: every run takes the full new-flow path
//!   (endpoint, config, parse, anti-spoofing, conntrack lookup that MISSES,
//!   identity, policy, counters) but skips the conntrack insert itself and the
//!   clock read that only the insert needs (one hash-map insert, ~100-150 ns on
//!   this machine class per TOOLCHAIN.md; paid once per allowed flow, never by
//!   denied ones).
//! - `established_ns`: a packet of a tracked flow (TCP ACK after the SYN created
//!   the entry): endpoint, parse, anti-spoofing, clock, conntrack hit, policy
//!   epoch read (same epoch: no re-judgement, no write). Measured before and
//!   after the epoch was added (A/B/A/B, load average ~10): 129-131 ns before,
//!   126-139 after at every size, noop 26 in both: within the noise.
//!
//! `entries` counts map entries: `entries/3` peer identities, each with one /32
//! address (host map) and two TCP table entries (allow 0-32767, deny
//! 32768-65535 as LPM prefixes; 3 inline segments in its partition), plus the 8
//! IDENTITY_ANY entries of the two tables. The measured packet goes to a peer in
//! the middle of the set, port 80. Every packet in the test run is linear, so
//! headers take the direct-read path (as on a veth for all but GSO/fragmented skbs).
//!
//! ## Figures (2 shared cores, load average 4-6: ±15 ns run to run)
//!
//! `cargo run -p palisade-datapath --example bench_datapath`, before (69b0857)
//! and after, interleaved A/B/A/B/A/B, one representative pair:
//!
//! | entries | new flow before | new flow after | established before | established after |
//! |---:|---:|---:|---:|---:|
//! | 100 | 273 | 92 | 118 | 87 |
//! | 1 000 | 297 | 98 | 121 | 80 |
//! | 10 000 | 336 | 98 | 125 | 82 |
//! | 100 000 | 410 | 96 | 119 | 83 |
//!
//! noop 18 ns in both. Over the three pairs, new flow at 100k: 394-461 ns before,
//! 92-97 after (74-79 ns above noop; goal <= 100), and 100 -> 100k growth 1.25-1.6x
//! before, 0.8-1.07x after (goal <= 1.2x). Established: 119-135 before, 78-83 after.
//!
//! ## Profile: where the time went (`--example profile_datapath`)
//!
//! Packets that leave the program at successive stages, so the differences are
//! the stage costs (ns, medians; "before" is a single run of this example on
//! 69b0857 under load, so its 100k column is high by ~50-100 ns next to the A/B
//! bench above):
//!
//! | packet (exits after) | before 100 / 100k | after 100 / 100k |
//! |---|---:|---:|
//! | noop | 22 / 28 | 18 / 18 |
//! | ARP: endpoint lookup, config, counters | 50 / 58 | 34 / 33 |
//! | spoofed SYN: + Ethernet/IPv4/TCP parse, anti-spoofing | 60 / 91 | 45 / 45 |
//! | established ACK: + clock, conntrack key + hit | 135 / 180 | 81 / 82 |
//! | new SYN to a pod peer: + conntrack miss, identity, policy | 353 / 589 | 98 / 98 |
//! | new UDP to a pod peer (peer has no UDP entries: ANY fallback) | 242 / 604 | 103 / 113 |
//! | new SYN to a non-pod address (0.0.0.0/0, peer ANY) | 182 / 322 | 102 / 98 |
//!
//! Breakdown before -> after, and the change that did it:
//! 1. policy LPM: ~100-300 ns, growing with entries (the trie over
//!    (table, peer, proto, port) deepens with every peer; a peer without entries
//!    paid two walks) -> ~10 ns: `palisade_policy_parts`, one hash lookup per
//!    (table, peer, class) with the port partition inline and a bounded scan.
//! 2. identity LPM for /32 peers: ~50-100 ns, growing (33k /32s in the trie) ->
//!    ~10 ns: `palisade_hosts4/6` exact match first; the LPM keeps only CIDRs.
//! 3. clock: ~15-30 ns per packet (`bpf_ktime_get_ns` reads the clocksource) ->
//!    0 for new flows until they create state, a few ns otherwise: read lazily,
//!    and the coarse clock (timeouts are seconds).
//! 4. header reads: 3 `bpf_skb_load_bytes` calls for TCP/IPv4, ~5 ns each ->
//!    direct reads of the linear data with a helper fallback (non-linear skbs,
//!    IPv6 extension headers, ICMP inner headers).
//! 5. config: looked up twice per new flow -> once per packet.
//!
//! What remains (after): ~15 ns endpoint lookup + counters, ~10 ns parse, ~35 ns
//! conntrack lookup (a 44-byte key hashed with jhash; both the hit and the miss
//! pay it), ~20 ns identity + partition lookups. No map writes on either
//! measured path; events cost nothing while logging is off for the verdict.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use palisade_policy::compiled::{
    Compiled, EndpointEntry, RuleTable, TableAction, TableEntry, TableVerdict, PROTO_CLASSES,
};
use serde::Serialize;

use crate::abi::{Config, CFG_F_NO_CT_CREATE};
use crate::loader::{Datapath, Error, Hook, MapSizes};
use crate::packet::Packet;

/// One policy size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BenchPoint {
    /// Address prefixes + table entries loaded.
    pub entries: usize,
    /// New allowed flow, ns per packet (median over rounds).
    pub ns_per_packet: f64,
    /// Established flow, ns per packet (median over rounds).
    pub established_ns: f64,
}

/// One round's figures at one size: every figure of a round is measured back to back,
/// so ratios within a round cancel drift that hits the whole round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoundFigures {
    /// Policy size.
    pub entries: usize,
    /// Empty program, ns per run (on this size's datapath).
    pub noop_ns: f64,
    /// New allowed flow, ns per packet.
    pub new_ns: f64,
    /// Established flow, ns per packet.
    pub established_ns: f64,
}

/// The result, serialised as `{"noop_ns": N, "points": [{"entries": .., "ns_per_packet": ..,
/// "established_ns": ..}], "rounds": [[{"entries", "noop_ns", "new_ns", "established_ns"}]]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Empty program, ns per run (median).
    pub noop_ns: f64,
    /// One point per policy size (medians over rounds).
    pub points: Vec<BenchPoint>,
    /// Per round, one entry per size in `points` order (the raw paired figures).
    pub rounds: Vec<Vec<RoundFigures>>,
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scratch pin root (removed afterwards). Must not be the agent's.
    pub pin_root: PathBuf,
    /// Policy sizes.
    pub entries: Vec<usize>,
    /// Runs per `BPF_PROG_TEST_RUN` call (the kernel reports their mean).
    pub repeat: u32,
    /// Rounds; each measures every size (in a rotated order) once.
    pub rounds: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(format!("/sys/fs/bpf/palisade-bench-{}", std::process::id())),
            entries: vec![100, 1_000, 10_000, 100_000],
            repeat: 200_000,
            // 31 rounds: the order-statistic interval of the median is [x(10), x(22)]
            // (97% coverage); about 0.3 s per round at the default sizes.
            rounds: 31,
        }
    }
}

/// The benchmark pod's address (the source of every measured packet).
pub const BENCH_POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const POD: Ipv4Addr = BENCH_POD;

/// The peer the measured packets go to: in the middle of the `entries` set.
pub fn bench_peer(entries: usize) -> Ipv4Addr {
    peer_addr((entries / 3).max(1) / 2)
}

/// Map sizes used for `entries` (room for the benchmark policy).
pub fn bench_sizes(entries: usize) -> MapSizes {
    MapSizes {
        policy: (entries as u32 * 12).max(1024),
        policy_parts: (entries as u32 * 12).max(1024),
        hosts4: (entries as u32).max(1024),
        ..MapSizes::default()
    }
}

fn peer_addr(i: usize) -> Ipv4Addr {
    let i = i as u32 + 1;
    Ipv4Addr::new(11, (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// The benchmark's compiled state for `entries` (see module doc).
pub fn bench_policy(entries: usize) -> Compiled {
    let peers = (entries / 3).max(1);
    let v = |action, rule| TableVerdict { action, rule };
    let mut t = RuleTable::default();
    for &p in &PROTO_CLASSES {
        let hi = if p == 0 { 0 } else { 65535 };
        t.entries.push(TableEntry {
            peer: 0,
            proto: p,
            port_lo: 0,
            port_hi: hi,
            verdict: v(TableAction::Deny, 1),
        });
    }
    let mut c = Compiled::default();
    c.addresses.insert("0.0.0.0/0".parse().expect("net"), 0);
    c.addresses.insert("::/0".parse().expect("net"), 0);
    for i in 0..peers {
        let id = i as u32 + 1;
        c.addresses
            .insert(ipnet::IpNet::from(IpAddr::V4(peer_addr(i))), id);
        for (lo, hi, a) in [
            (0, 79, TableAction::Deny),
            (80, 80, TableAction::Allow),
            (81, 65535, TableAction::Deny),
        ] {
            t.entries.push(TableEntry {
                peer: id,
                proto: 6,
                port_lo: lo,
                port_hi: hi,
                verdict: v(a, 2),
            });
        }
    }
    t.entries.sort_by_key(|e| (e.peer, e.proto, e.port_lo));
    c.tables.insert(1, t.clone());
    c.tables.insert(2, t);
    c.endpoints.insert(
        "bench/pod".into(),
        EndpointEntry {
            pod: "bench/pod".into(),
            ips: vec![IpAddr::V4(POD)],
            ingress: 1,
            egress: 2,
            generation: 1,
        },
    );
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One size's loaded datapath and its two measured frames.
struct Size {
    n: usize,
    dp: Datapath,
    syn: Vec<u8>,
    ack: Vec<u8>,
}

fn once(dp: &mut Datapath, hook: Hook, frame: &[u8], o: &BenchOptions) -> Result<f64, Error> {
    let (_, d) = dp.test_run(hook, frame, o.repeat)?;
    Ok(d.as_nanos() as f64)
}

/// Runs the benchmark (needs root and bpffs). Every size gets its own datapath under
/// `o.pin_root/n<N>`, all loaded before the first round so that rounds interleave the
/// sizes (rotating the order each round); everything is removed afterwards, even on
/// error.
pub fn bench_datapath(o: &BenchOptions) -> Result<BenchReport, Error> {
    struct Cleanup(PathBuf, Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for sub in &self.1 {
                let _ = crate::loader::unpin_all_at(sub);
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let mut cleanup = Cleanup(o.pin_root.clone(), Vec::new());
    let noop_frame = Packet::udp("10.0.0.1", "10.0.0.2", 1, 2).frame();
    let mut sizes = Vec::new();
    for &n in &o.entries {
        let root = o.pin_root.join(format!("n{n}"));
        cleanup.1.push(root.clone());
        let _ = crate::loader::unpin_all_at(&root);
        let mut dp = Datapath::load_or_adopt(&root, bench_sizes(n))?;
        dp.sync(&bench_policy(n))?;
        dp.bind("bench/pod", 1)?;
        let peer = bench_peer(n).to_string();
        // Two flows: the measured SYN (port 40000) must never get an entry, so that every
        // run misses; the ACK (port 40001) hits the entry its own SYN created first.
        let syn = Packet::tcp(&POD.to_string(), &peer, 40000, 80, 0x02).frame();
        let ack = Packet::tcp(&POD.to_string(), &peer, 40001, 80, 0x10).frame();
        let ack_syn = Packet::tcp(&POD.to_string(), &peer, 40001, 80, 0x02).frame();
        dp.test_run(Hook::FromPod, &ack_syn, 1)?;
        dp.set_config(Config {
            flags: CFG_F_NO_CT_CREATE,
            ..Config::default()
        })?;
        let (rc, _) = dp.test_run(Hook::FromPod, &syn, 1)?;
        assert_eq!(
            rc,
            crate::abi::TC_ACT_UNSPEC,
            "benchmark packet must be allowed"
        );
        sizes.push(Size { n, dp, syn, ack });
    }
    let mut rounds = Vec::with_capacity(o.rounds);
    for r in 0..o.rounds.max(1) {
        let mut figs = vec![None; sizes.len()];
        for j in 0..sizes.len() {
            let i = (j + r) % sizes.len();
            let s = &mut sizes[i];
            let noop_ns = once(&mut s.dp, Hook::Noop, &noop_frame, o)?;
            let new_ns = once(&mut s.dp, Hook::FromPod, &s.syn, o)?;
            let established_ns = once(&mut s.dp, Hook::FromPod, &s.ack, o)?;
            figs[i] = Some(RoundFigures {
                entries: s.n,
                noop_ns,
                new_ns,
                established_ns,
            });
        }
        rounds.push(figs.into_iter().flatten().collect::<Vec<_>>());
    }
    let col = |i: usize, f: fn(&RoundFigures) -> f64| -> f64 {
        median(rounds.iter().map(|r| f(&r[i])).collect())
    };
    let points = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| BenchPoint {
            entries: s.n,
            ns_per_packet: col(i, |f| f.new_ns),
            established_ns: col(i, |f| f.established_ns),
        })
        .collect();
    let noop_ns = median(
        rounds
            .iter()
            .flat_map(|r| r.iter().map(|f| f.noop_ns))
            .collect(),
    );
    for s in sizes {
        s.dp.unpin_all()?;
    }
    Ok(BenchReport {
        noop_ns,
        points,
        rounds,
    })
}
