//! `bench_datapath`: per-packet cost of the programs, measured in the kernel with
//! `BPF_PROG_TEST_RUN` (the kernel times `repeat` runs of the same packet and
//! reports the mean; we take the median of several such runs).
//!
//! What is measured, honestly:
//! - `noop_ns`: the `noop` classifier: the test-run floor (skb setup excluded,
//!   program dispatch included).
//! - `ns_per_packet`: a NEW flow that policy allows, from_pod, TCP SYN. A repeated
//!   packet would hit the conntrack entry its first run created, so the runs set
//!   `PALISADE_CFG_F_NO_CT_CREATE`: every run takes the full new-flow path
//!   (endpoint, parse, anti-spoofing, conntrack miss, identity LPM, policy LPM,
//!   counters) but skips the conntrack insert itself (one hash-map insert,
//!   ~100-150 ns on this machine class per TOOLCHAIN.md; paid once per flow).
//! - `established_ns`: a packet of a tracked flow (TCP ACK after the SYN created
//!   the entry): endpoint, parse, anti-spoofing, conntrack hit.
//!
//! `entries` counts address prefixes plus rule-table entries: `entries/4` peer
//! identities, each with one /32 address and three TCP entries (deny 0-79,
//! allow 80, deny 81-65535); port ranges expand into several LPM prefixes each.

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
    /// New allowed flow, ns per packet (median).
    pub ns_per_packet: f64,
    /// Established flow, ns per packet (median).
    pub established_ns: f64,
}

/// The result, serialised as `{"noop_ns": N, "points": [{"entries": .., "ns_per_packet": .., "established_ns": ..}]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Empty program, ns per run (median).
    pub noop_ns: f64,
    /// One point per policy size.
    pub points: Vec<BenchPoint>,
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scratch pin root (removed afterwards). Must not be the agent's.
    pub pin_root: PathBuf,
    /// Policy sizes.
    pub entries: Vec<usize>,
    /// Runs per `BPF_PROG_TEST_RUN` call.
    pub repeat: u32,
    /// Calls per measurement; the median is reported.
    pub runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(format!("/sys/fs/bpf/palisade-bench-{}", std::process::id())),
            entries: vec![100, 1_000, 10_000, 100_000],
            repeat: 200_000,
            runs: 7,
        }
    }
}

const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn peer_addr(i: usize) -> Ipv4Addr {
    let i = i as u32 + 1;
    Ipv4Addr::new(11, (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// The benchmark's compiled state for `entries` (see module doc).
pub fn bench_policy(entries: usize) -> Compiled {
    let peers = (entries / 4).max(1);
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

fn measure(dp: &mut Datapath, hook: Hook, frame: &[u8], o: &BenchOptions) -> Result<f64, Error> {
    let mut xs = Vec::with_capacity(o.runs);
    for _ in 0..o.runs {
        let (_, d) = dp.test_run(hook, frame, o.repeat)?;
        xs.push(d.as_nanos() as f64);
    }
    Ok(median(xs))
}

/// Runs the benchmark (needs root and bpffs). Each size gets a fresh datapath
/// under `o.pin_root`, removed afterwards even on error.
pub fn bench_datapath(o: &BenchOptions) -> Result<BenchReport, Error> {
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = crate::loader::unpin_all_at(&self.0);
        }
    }
    let _cleanup = Cleanup(o.pin_root.clone());
    let mut noop = Vec::new();
    let mut points = Vec::new();
    for &n in &o.entries {
        let _ = crate::loader::unpin_all_at(&o.pin_root);
        let sizes = MapSizes {
            policy: (n as u32 * 12).max(1024),
            addr4: (n as u32).max(1024),
            ..MapSizes::default()
        };
        let mut dp = Datapath::load_or_adopt(&o.pin_root, sizes)?;
        dp.sync(&bench_policy(n))?;
        dp.bind("bench/pod", 1)?;
        noop.push(measure(
            &mut dp,
            Hook::Noop,
            &Packet::udp("10.0.0.1", "10.0.0.2", 1, 2).frame(),
            o,
        )?);
        let peer = peer_addr((n / 4).max(1) / 2).to_string();
        let syn = Packet::tcp(&POD.to_string(), &peer, 40000, 80, 0x02).frame();
        dp.set_config(Config {
            flags: CFG_F_NO_CT_CREATE,
            ..Config::default()
        })?;
        let (rc, _) = dp.test_run(Hook::FromPod, &syn, 1)?;
        debug_assert_eq!(rc, crate::abi::TC_ACT_UNSPEC);
        let new_ns = measure(&mut dp, Hook::FromPod, &syn, o)?;
        dp.set_config(Config::default())?;
        dp.test_run(Hook::FromPod, &syn, 1)?;
        let ack = Packet::tcp(&POD.to_string(), &peer, 40000, 80, 0x10).frame();
        let est_ns = measure(&mut dp, Hook::FromPod, &ack, o)?;
        points.push(BenchPoint {
            entries: n,
            ns_per_packet: new_ns,
            established_ns: est_ns,
        });
        dp.unpin_all()?;
    }
    Ok(BenchReport {
        noop_ns: median(noop),
        points,
    })
}
