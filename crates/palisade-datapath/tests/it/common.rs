//! Fixtures: a datapath under a unique pin root removed on Drop (even on panic),
//! and table builders.

use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use palisade_datapath::packet::{Packet, L4};
use palisade_datapath::{abi, Datapath, Hook, MapSizes};
use palisade_policy::compiled::{
    Compiled, EndpointEntry, RuleTable, TableAction, TableEntry, TableVerdict, PROTO_CLASSES,
};

static N: AtomicUsize = AtomicUsize::new(0);

/// A unique pin root `/sys/fs/bpf/palisade-test-<pid>-<n>`.
pub fn unique_root() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/palisade-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// RAII pin root: removes every pin under it on Drop.
pub struct PinRoot(pub PathBuf);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = palisade_datapath::unpin_all_at(&self.0);
        // Anything unpin_all_at does not know (it removes links/, progs/, maps/ and
        // the root only if then empty) must not keep the root alive either.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loaded datapath whose pins disappear with it.
pub struct TestDp {
    pub dp: Option<Datapath>,
    pub root: PinRoot,
}

impl TestDp {
    pub fn new() -> Self {
        Self::with_sizes(MapSizes {
            conntrack: 65536,
            policy: 65536,
            ..MapSizes::default()
        })
    }

    pub fn with_sizes(sizes: MapSizes) -> Self {
        let root = PinRoot(unique_root());
        let dp = Datapath::load_or_adopt(&root.0, sizes).expect("load datapath");
        Self { dp: Some(dp), root }
    }

    /// Runs a frame once; returns (passed, return code).
    pub fn run(&mut self, hook: Hook, frame: &[u8]) -> bool {
        let (rc, _) = self.test_run(hook, frame, 1).expect("test run");
        match rc {
            abi::TC_ACT_UNSPEC => true,
            abi::TC_ACT_SHOT => false,
            other => panic!("unexpected return code {other}"),
        }
    }

    /// Counter of the endpoint bound at ifindex 1.
    pub fn count(&self, dir: u32, reason: u32) -> u64 {
        let c = self.counters().expect("counters");
        c.endpoints
            .get(&1)
            .map(|e| e[dir as usize][reason as usize])
            .unwrap_or(0)
    }
}

impl Deref for TestDp {
    type Target = Datapath;
    fn deref(&self) -> &Datapath {
        self.dp.as_ref().expect("dp")
    }
}

impl DerefMut for TestDp {
    fn deref_mut(&mut self) -> &mut Datapath {
        self.dp.as_mut().expect("dp")
    }
}

impl Drop for TestDp {
    fn drop(&mut self) {
        // Close the maps and programs before the pin root is removed.
        self.dp.take();
    }
}

pub fn allow(rule: u32) -> TableVerdict {
    TableVerdict {
        action: TableAction::Allow,
        rule,
    }
}

pub fn deny(rule: u32) -> TableVerdict {
    TableVerdict {
        action: TableAction::Deny,
        rule,
    }
}

/// A table where IDENTITY_ANY gets `default` for every class, plus `extra`
/// entries (which must each cover a whole (peer, proto) port space).
pub fn table(default: TableVerdict, extra: &[TableEntry]) -> RuleTable {
    let mut entries: Vec<TableEntry> = PROTO_CLASSES
        .iter()
        .map(|&p| TableEntry {
            peer: 0,
            proto: p,
            port_lo: 0,
            port_hi: if p == 0 { 0 } else { 65535 },
            verdict: default,
        })
        .filter(|e| !extra.iter().any(|x| x.peer == 0 && x.proto == e.proto))
        .collect();
    entries.extend_from_slice(extra);
    entries.sort_by_key(|e| (e.peer, e.proto, e.port_lo));
    RuleTable { entries }
}

/// Entries for (peer, proto) covering all ports: `ranges` get their verdicts,
/// the gaps get `rest`.
pub fn ports(
    peer: u32,
    proto: u8,
    ranges: &[(u16, u16, TableVerdict)],
    rest: TableVerdict,
) -> Vec<TableEntry> {
    let mut out = Vec::new();
    let mut next: u32 = 0;
    let mut rs = ranges.to_vec();
    rs.sort_by_key(|r| r.0);
    for (lo, hi, v) in rs {
        if u32::from(lo) > next {
            out.push(TableEntry {
                peer,
                proto,
                port_lo: next as u16,
                port_hi: lo - 1,
                verdict: rest,
            });
        }
        out.push(TableEntry {
            peer,
            proto,
            port_lo: lo,
            port_hi: hi,
            verdict: v,
        });
        next = u32::from(hi) + 1;
    }
    if next <= 65535 {
        out.push(TableEntry {
            peer,
            proto,
            port_lo: next as u16,
            port_hi: 65535,
            verdict: rest,
        });
    }
    out
}

/// The pod under test: 10.0.0.1 and fd00::1, bound to the loopback (ifindex 1),
/// ingress table 1, egress table 2.
pub const POD: &str = "test/pod";

pub fn compiled(ingress: RuleTable, egress: RuleTable, addresses: &[(&str, u32)]) -> Compiled {
    let mut c = Compiled::default();
    c.addresses.insert("0.0.0.0/0".parse().unwrap(), 0);
    c.addresses.insert("::/0".parse().unwrap(), 0);
    for (net, id) in addresses {
        c.addresses.insert(net.parse().unwrap(), *id);
    }
    c.tables.insert(1, ingress);
    c.tables.insert(2, egress);
    c.endpoints.insert(
        POD.into(),
        EndpointEntry {
            pod: POD.into(),
            ips: vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap(),
            ],
            ingress: 1,
            egress: 2,
            generation: 1,
        },
    );
    c
}

/// Loads, syncs `c` and binds the pod to ifindex 1.
pub fn loaded(c: &Compiled) -> TestDp {
    let mut t = TestDp::new();
    t.sync(c).expect("sync");
    t.bind(POD, 1).expect("bind");
    t
}

/// xorshift64*: deterministic from the printed seed, for the differential tests.
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with `pct` percent probability.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    /// A seed from `PALISADE_DIFF_SEED`, else from the clock (printed by the caller).
    pub fn seed() -> u64 {
        std::env::var("PALISADE_DIFF_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            })
    }
}

/// An ICMP or ICMPv6 packet (by the addresses' family) of type `ty`, code 0: `id` is
/// the echo identifier (or the NDP flags word) and `inner` the payload or quote.
pub fn icmp(src: &str, dst: &str, ty: u8, id: u16, inner: Vec<u8>) -> Packet {
    Packet::new(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        L4::Icmp {
            ty,
            code: 0,
            id,
            inner,
        },
    )
}
