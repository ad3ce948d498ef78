//! Loading, pinning, attaching, and writing state into the kernel.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{qdisc_add_clsact, NlOptions, SchedClassifierLink, TcAttachOptions};
use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
};
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;
use palisade_policy::compiled::{Compiled, Delta, IdentityId, RuleTable, TableId};
use serde::Serialize;

use crate::abi::{
    self, AddrValue, Config, CtKey, CtValue, EndpointValue, PolicyMatch, PolicyValue,
};
use crate::maps::{self, addr_net, AddrKey, EncodeError};
use crate::state::{policy_key_of, Caps, Planner, State, Write};

/// The production object, compiled by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade.bpf.o"));

/// The compiled eBPF object (for the ABI test and inspection tools).
pub fn object_bytes() -> &'static [u8] {
    OBJECT
}

/// Default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/palisade";

/// Map capacities, in entries, applied when a map is created. Maps adopted from
/// pins keep the size they were created with; capacity checks use the real size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MapSizes {
    /// Endpoints (attached interfaces) and counter slots.
    pub endpoints: u32,
    /// IPv4 prefixes in the address map.
    pub addr4: u32,
    /// IPv6 prefixes in the address map.
    pub addr6: u32,
    /// Policy prefixes (after port range expansion) over all tables.
    pub policy: u32,
    /// Tracked connections over all endpoints.
    pub conntrack: u32,
    /// Fragmented datagrams in flight.
    pub frags: u32,
    /// Event ring buffer size in bytes (power of two, multiple of the page size).
    pub events_bytes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            endpoints: 1024,
            addr4: 65536,
            addr6: 65536,
            policy: 262144,
            conntrack: 262144,
            frags: 8192,
            events_bytes: 256 * 1024,
        }
    }
}

/// Errors of the loader. Load/pin/attach errors are retryable once the cause
/// (permissions, bpffs, interface) is fixed; `Capacity` and `Encode` are not:
/// the input must change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading the object or a program failed (verifier log in the source).
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    /// A program operation failed.
    #[error("program {name}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {name}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// A map or program is missing from the object (build mismatch).
    #[error("object has no {0}")]
    Missing(&'static str),
    /// A bpffs pin could not be created, read or removed.
    #[error("pin {path}")]
    Pin {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An interface could not be resolved.
    #[error("interface {0}")]
    Interface(String, #[source] io::Error),
    /// The update would not fit: nothing was written, the old state stays in force.
    #[error("{map} would need {needed} entries but holds {capacity}: update rejected, previous state kept")]
    Capacity {
        /// Map.
        map: &'static str,
        /// Peak entries during the update.
        needed: usize,
        /// max_entries.
        capacity: u32,
    },
    /// Compiled state that cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// No such attached pod.
    #[error("pod {0} is not attached")]
    NotAttached(String),
    /// The ring buffer reader was already handed out.
    #[error("the event reader was already taken")]
    EventsTaken,
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map { name, source }
}

fn prog_err(name: &'static str) -> impl Fn(ProgramError) -> Error {
    move |source| Error::Program { name, source }
}

/// The three programs of the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Pod egress: TC ingress of the host-side veth.
    FromPod,
    /// Pod ingress: TC egress of the host-side veth.
    ToPod,
    /// Returns at once (benchmark floor).
    Noop,
}

impl Hook {
    /// Program (ELF symbol) name.
    pub fn name(self) -> &'static str {
        match self {
            Hook::FromPod => "from_pod",
            Hook::ToPod => "to_pod",
            Hook::Noop => "noop",
        }
    }
}

/// Names of every map, all pinned under `<pin root>/maps/`.
pub const MAP_NAMES: [&str; 11] = [
    "palisade_endpoints",
    "palisade_addr4",
    "palisade_addr6",
    "palisade_policy",
    "palisade_conntrack",
    "palisade_frags",
    "palisade_counters",
    "palisade_stats",
    "palisade_config",
    "palisade_ratelimit",
    "palisade_events",
];

/// Counters of one endpoint: `[direction][reason]`, summed over CPUs.
pub type EndpointCounters = [[u64; abi::REASON_NR]; abi::DIR_NR];

/// A snapshot of every counter.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// By host-side ifindex.
    pub endpoints: BTreeMap<u32, EndpointCounters>,
    /// Packets on interfaces without an endpoint entry (slot 0).
    pub no_endpoint: EndpointCounters,
    /// Global statistics, indexed by `abi::STAT_*`.
    pub stats: [u64; abi::STAT_NR],
}

/// Name of a drop/pass reason (`abi::REASON_*`).
pub fn reason_name(reason: u32) -> &'static str {
    const NAMES: [&str; abi::REASON_NR] = [
        "policy-allow",
        "ct-established",
        "ct-reply",
        "ct-related",
        "frag-tracked",
        "ndp",
        "non-ip",
        "policy-deny",
        "no-endpoint",
        "spoof",
        "malformed",
        "frag-no-state",
        "ipv6-ext-limit",
        "no-identity",
        "no-table",
        "vlan",
    ];
    NAMES.get(reason as usize).copied().unwrap_or("unknown")
}

/// One decoded decision event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionEvent {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// Host-side ifindex.
    pub ifindex: u32,
    /// "egress" (from the pod) or "ingress" (to the pod).
    pub direction: &'static str,
    /// Passed or dropped.
    pub allowed: bool,
    /// Reason name (see [`reason_name`]).
    pub reason: &'static str,
    /// RuleId behind the verdict (0 if none).
    pub rule_id: u32,
    /// Peer identity (0 if not looked up).
    pub identity: u32,
    /// TableId consulted.
    pub table: u32,
    /// IP protocol number.
    pub proto: u8,
    /// Source address (None for non-IP).
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Source port (ICMP echo id), host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// TCP flags, or ICMP type.
    pub tcp_flags: u8,
}

fn decode_event(e: &abi::Event) -> DecisionEvent {
    let addr = |a: &[u8; 16]| match e.family {
        4 => Some(IpAddr::from([a[0], a[1], a[2], a[3]])),
        6 => Some(IpAddr::from(*a)),
        _ => None,
    };
    DecisionEvent {
        ts_ns: e.ts_ns,
        ifindex: e.ifindex,
        direction: if u32::from(e.dir) == abi::DIR_EGRESS {
            "egress"
        } else {
            "ingress"
        },
        allowed: e.action == abi::ACTION_ALLOW,
        reason: reason_name(u32::from(e.reason)),
        rule_id: e.rule_id,
        identity: e.identity,
        table: e.table,
        proto: e.proto,
        src: addr(&e.saddr),
        dst: addr(&e.daddr),
        sport: u16::from_be(e.sport),
        dport: u16::from_be(e.dport),
        tcp_flags: e.tcp_flags,
    }
}

/// Reader of the decision ring buffer. Poll its fd (`as_raw_fd`) for readiness,
/// then drain with [`EventReader::next`].
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    /// The next event, if one is ready.
    #[allow(clippy::should_implement_trait)] // borrowing item, like RingBuf::next
    pub fn next(&mut self) -> Option<DecisionEvent> {
        let item = self.ring.next()?;
        if item.len() < std::mem::size_of::<abi::Event>() {
            return None;
        }
        // SAFETY: the record is a `struct event` written by the program (checked
        // length); read_unaligned copes with the ring's 8-byte alignment.
        let e: abi::Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        Some(decode_event(&e))
    }
}

impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// What the kernel holds for one table, decoded back into policy terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableDump {
    /// TableId.
    pub id: TableId,
    /// Entries, port ranges merged back.
    pub table: RuleTable,
}

/// What the kernel holds for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointDump {
    /// Host-side ifindex.
    pub ifindex: u32,
    /// Pod bound to it in this process, if any.
    pub pod: Option<String>,
    /// Anti-spoofing addresses.
    pub ips: Vec<IpAddr>,
    /// Counter slot.
    pub slot: u32,
    /// PALISADE_EP_F_*.
    pub flags: u32,
    /// EndpointEntry.generation in force.
    pub generation: u64,
    /// Table for traffic towards the pod.
    pub ingress: TableDump,
    /// Table for traffic from the pod.
    pub egress: TableDump,
}

/// The loaded datapath: programs, pinned maps, and the userspace mirror.
///
/// Not `Sync`: one owner (the agent's datapath task) serialises all writes; map
/// contents are read by the kernel concurrently, which the write order handles.
pub struct Datapath {
    root: PathBuf,
    ebpf: Ebpf,
    endpoints: HashMap<MapData, u32, EndpointValue>,
    addr4: LpmTrie<MapData, [u8; 4], AddrValue>,
    addr6: LpmTrie<MapData, [u8; 16], AddrValue>,
    policy: LpmTrie<MapData, PolicyMatch, PolicyValue>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    counters: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    config: Array<MapData, Config>,
    events: Option<RingBuf<MapData>>,
    caps: Caps,
    state: State,
    adopted: bool,
    ncpus: usize,
}

fn pin_dir(root: &Path, sub: &str) -> Result<PathBuf> {
    let p = root.join(sub);
    std::fs::create_dir_all(&p).map_err(|source| Error::Pin {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}

fn ifname_of(ifindex: u32) -> Result<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(Error::Interface(
            ifindex.to_string(),
            io::Error::last_os_error(),
        ));
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// ifindex of an interface in the current network namespace.
pub fn ifindex_of(ifname: &str) -> Result<u32> {
    let c =
        CString::new(ifname).map_err(|e| Error::Interface(ifname.into(), io::Error::other(e)))?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(Error::Interface(ifname.into(), io::Error::last_os_error()));
    }
    Ok(i)
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let m = ebpf.take_map(name).ok_or(Error::Missing(name))?;
    T::try_from(m).map_err(map_err(name))
}

fn link_pin(root: &Path, ifindex: u32, hook: Hook) -> PathBuf {
    root.join("links")
        .join(format!("{ifindex}-{}", hook.name()))
}

impl Datapath {
    /// Loads the programs and opens the maps under `pin_root` (default
    /// [`DEFAULT_PIN_ROOT`]): maps already pinned there are ADOPTED with their
    /// contents (no flush, enforcement continues), missing ones are created with
    /// `sizes` and pinned. Programs are (re)loaded, pinned under `progs/`, and
    /// every pinned TCX link under `links/` is switched to the new programs with
    /// one atomic `BPF_LINK_UPDATE` each: an upgrade has no enforcement gap.
    pub fn load_or_adopt(pin_root: &Path, sizes: MapSizes) -> Result<Self> {
        let maps_dir = pin_dir(pin_root, "maps")?;
        let progs_dir = pin_dir(pin_root, "progs")?;
        pin_dir(pin_root, "links")?;
        let adopted = maps_dir.join("palisade_endpoints").exists();
        let slots = sizes.endpoints + 1;
        let mut loader = EbpfLoader::new();
        for name in MAP_NAMES {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        loader
            .map_max_entries("palisade_endpoints", sizes.endpoints)
            .map_max_entries("palisade_addr4", sizes.addr4)
            .map_max_entries("palisade_addr6", sizes.addr6)
            .map_max_entries("palisade_policy", sizes.policy)
            .map_max_entries("palisade_conntrack", sizes.conntrack)
            .map_max_entries("palisade_frags", sizes.frags)
            .map_max_entries("palisade_counters", slots * abi::COUNTERS_PER_SLOT as u32)
            .map_max_entries("palisade_events", sizes.events_bytes);
        let mut ebpf = loader.load(OBJECT).map_err(Error::Load)?;
        for hook in [Hook::FromPod, Hook::ToPod, Hook::Noop] {
            let name = hook.name();
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(Error::Missing(name))?
                .try_into()
                .map_err(prog_err(name))?;
            prog.load().map_err(prog_err(name))?;
            let path = progs_dir.join(name);
            let _ = std::fs::remove_file(&path);
            prog.pin(&path).map_err(|e| Error::Pin {
                path: path.clone(),
                source: io::Error::other(e),
            })?;
        }
        let cap = |name: &'static str| -> Result<u32> {
            aya::maps::MapInfo::from_pin(maps_dir.join(name))
                .map(|i| i.max_entries())
                .map_err(map_err(name))
        };
        let caps = Caps {
            endpoints: cap("palisade_endpoints")?
                .min(cap("palisade_counters")? / abi::COUNTERS_PER_SLOT as u32 - 1),
            addr4: cap("palisade_addr4")?,
            addr6: cap("palisade_addr6")?,
            policy: cap("palisade_policy")?,
        };
        let mut dp = Datapath {
            root: pin_root.to_path_buf(),
            endpoints: take(&mut ebpf, "palisade_endpoints")?,
            addr4: take(&mut ebpf, "palisade_addr4")?,
            addr6: take(&mut ebpf, "palisade_addr6")?,
            policy: take(&mut ebpf, "palisade_policy")?,
            conntrack: take(&mut ebpf, "palisade_conntrack")?,
            counters: take(&mut ebpf, "palisade_counters")?,
            stats: take(&mut ebpf, "palisade_stats")?,
            config: take(&mut ebpf, "palisade_config")?,
            events: Some(take(&mut ebpf, "palisade_events")?),
            ebpf,
            caps,
            state: State::default(),
            adopted,
            ncpus: aya::util::nr_cpus().map_err(|(_, e)| Error::Interface("cpus".into(), e))?,
        };
        dp.reload_mirror()?;
        dp.upgrade_links()?;
        Ok(dp)
    }

    /// True if the maps existed before this load (restart or upgrade).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The pin root.
    pub fn pin_root(&self) -> &Path {
        &self.root
    }

    /// Re-reads the mirror from the kernel maps (after adoption, or if a write
    /// failed half-way).
    fn reload_mirror(&mut self) -> Result<()> {
        let mut s = State {
            desired: std::mem::take(&mut self.state.desired),
            bindings: std::mem::take(&mut self.state.bindings),
            flags: std::mem::take(&mut self.state.flags),
            ..State::default()
        };
        for kv in self.policy.iter() {
            let (k, v) = kv.map_err(map_err("palisade_policy"))?;
            s.policy
                .insert(crate::state::pkey(&crate::abi::PolicyKey::from_lpm(&k)), v);
        }
        for kv in self.addr4.iter() {
            let (k, v) = kv.map_err(map_err("palisade_addr4"))?;
            s.addrs.insert(
                AddrKey::V4(abi::Addr4Key {
                    prefixlen: k.prefix_len(),
                    addr: k.data(),
                }),
                v.identity,
            );
        }
        for kv in self.addr6.iter() {
            let (k, v) = kv.map_err(map_err("palisade_addr6"))?;
            s.addrs.insert(
                AddrKey::V6(abi::Addr6Key {
                    prefixlen: k.prefix_len(),
                    addr: k.data(),
                }),
                v.identity,
            );
        }
        for kv in self.endpoints.iter() {
            let (k, v) = kv.map_err(map_err("palisade_endpoints"))?;
            s.endpoints.insert(k, v);
        }
        self.state = s;
        Ok(())
    }

    fn classifier(&mut self, hook: Hook) -> Result<&mut SchedClassifier> {
        let name = hook.name();
        self.ebpf
            .program_mut(name)
            .ok_or(Error::Missing(name))?
            .try_into()
            .map_err(prog_err(name))
    }

    /// Points every pinned link at the freshly loaded programs.
    fn upgrade_links(&mut self) -> Result<()> {
        let dir = self.root.join("links");
        let entries = std::fs::read_dir(&dir).map_err(|source| Error::Pin {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hook = if name.ends_with("-from_pod") {
                Hook::FromPod
            } else if name.ends_with("-to_pod") {
                Hook::ToPod
            } else {
                continue;
            };
            self.replace_link(&entry.path(), hook)?;
        }
        Ok(())
    }

    fn replace_link(&mut self, path: &Path, hook: Hook) -> Result<()> {
        let pinned = PinnedLink::from_pin(path).map_err(|e| Error::Pin {
            path: path.into(),
            source: io::Error::other(e),
        })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| Error::Pin {
            path: path.into(),
            source: io::Error::other(e),
        })?;
        let name = hook.name();
        let prog = self.classifier(hook)?;
        let id = prog.attach_to_link(link).map_err(prog_err(name))?;
        // The pin keeps the link; dropping our fd does not detach it.
        drop(prog.take_link(id).map_err(prog_err(name))?);
        Ok(())
    }

    /// Binds `pod` to an interface without attaching programs: its endpoint
    /// entry (if the pod is known) is written now. `attach` calls this; tests
    /// driving `BPF_PROG_TEST_RUN` bind to the loopback's ifindex 1.
    pub fn bind(&mut self, pod: &str, ifindex: u32) -> Result<()> {
        self.state.bindings.insert(pod.to_string(), ifindex);
        self.plan_and_write(|p| p.write_endpoint_pub(pod))
    }

    /// Sets PALISADE_EP_F_* flags of a pod (rewrites its entry if bound).
    pub fn set_endpoint_flags(&mut self, pod: &str, flags: u32) -> Result<()> {
        self.state.flags.insert(pod.to_string(), flags);
        self.plan_and_write(|p| p.write_endpoint_pub(pod))
    }

    /// Attaches `from_pod` (TC ingress) and `to_pod` (TC egress) to the pod's
    /// host-side interface, after writing its endpoint entry if its policy is
    /// known (if not, the programs drop everything until it is: fail closed, so
    /// a pod is never enforced by nothing). Uses TCX links pinned under
    /// `links/` (they survive the agent); falls back to a netlink clsact filter
    /// on kernels without TCX. Re-attaching an attached interface updates the
    /// link to the current programs.
    pub fn attach(&mut self, pod: &str, ifname: &str) -> Result<u32> {
        let ifindex = ifindex_of(ifname)?;
        self.bind(pod, ifindex)?;
        for (hook, at) in [
            (Hook::FromPod, TcAttachType::Ingress),
            (Hook::ToPod, TcAttachType::Egress),
        ] {
            let path = link_pin(&self.root, ifindex, hook);
            if path.exists() {
                self.replace_link(&path, hook)?;
                continue;
            }
            let name = hook.name();
            let prog = self.classifier(hook)?;
            let id = match prog.attach_with_options(
                ifname,
                at,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(id) => id,
                Err(_) => {
                    // Kernel < 6.6: netlink clsact filter (not pinnable; it stays until detach).
                    let _ = qdisc_add_clsact(ifname);
                    prog.attach_with_options(
                        ifname,
                        at,
                        TcAttachOptions::Netlink(NlOptions::default()),
                    )
                    .map_err(prog_err(name))?
                }
            };
            let link = prog.take_link(id).map_err(prog_err(name))?;
            if <&FdLink>::try_from(&link).is_ok() {
                let fd = FdLink::try_from(link).map_err(|e| Error::Pin {
                    path: path.clone(),
                    source: io::Error::other(e),
                })?;
                fd.pin(&path).map_err(|e| Error::Pin {
                    path: path.clone(),
                    source: io::Error::other(e),
                })?;
            } else {
                // A netlink filter is detached when its handle drops: keep it attached.
                std::mem::forget(link);
            }
        }
        Ok(ifindex)
    }

    /// [`Datapath::attach`] by interface index.
    pub fn attach_ifindex(&mut self, pod: &str, ifindex: u32) -> Result<u32> {
        let name = ifname_of(ifindex)?;
        self.attach(pod, &name)
    }

    /// Detaches the programs from the pod's interface and removes its endpoint
    /// entry (links first, so the interface never runs without its entry).
    pub fn detach(&mut self, pod: &str) -> Result<()> {
        let ifindex = *self
            .state
            .bindings
            .get(pod)
            .ok_or_else(|| Error::NotAttached(pod.into()))?;
        for hook in [Hook::FromPod, Hook::ToPod] {
            let path = link_pin(&self.root, ifindex, hook);
            if let Ok(l) = PinnedLink::from_pin(&path) {
                drop(l.unpin().map_err(|source| Error::Pin {
                    path: path.clone(),
                    source,
                })?);
            }
        }
        self.state.bindings.remove(pod);
        if self.state.endpoints.contains_key(&ifindex) {
            self.endpoints
                .remove(&ifindex)
                .map_err(map_err("palisade_endpoints"))?;
            self.state.endpoints.remove(&ifindex);
        }
        Ok(())
    }

    /// Applies a Delta, op by op, in its order. The whole delta is planned first
    /// on a copy of the mirror; if any map would overflow at any point, nothing
    /// is written and [`Error::Capacity`] is returned.
    pub fn apply(&mut self, delta: &Delta) -> Result<()> {
        self.plan_and_write(|p| {
            for op in &delta.ops {
                p.op(op)?;
            }
            Ok(())
        })
    }

    /// Full resync to `compiled` (see `Planner::sync` for the order): new state
    /// is written aside first, endpoints switch with one write each, stale state
    /// is removed last. Capacity is checked before the first write.
    pub fn sync(&mut self, compiled: &Compiled) -> Result<()> {
        self.plan_and_write(|p| p.sync(compiled))
    }

    fn plan_and_write(
        &mut self,
        f: impl FnOnce(&mut Planner<'_>) -> Result<(), EncodeError>,
    ) -> Result<()> {
        let mut sim = self.state.clone();
        let mut planner = Planner::new(&mut sim, self.caps);
        f(&mut planner)?;
        if let Some((map, needed, capacity)) = planner.overflow() {
            return Err(Error::Capacity {
                map,
                needed,
                capacity,
            });
        }
        let plan = std::mem::take(&mut planner.plan);
        if let Err(e) = self.write(&plan) {
            // Keep the mirror truthful, whatever got written.
            let _ = self.reload_mirror();
            return Err(e);
        }
        self.state = sim;
        Ok(())
    }

    fn write(&mut self, plan: &[Write]) -> Result<()> {
        for w in plan {
            match w {
                Write::PutPolicy(k, v) => self
                    .policy
                    .insert(&policy_key_of(k).to_lpm(), v, 0)
                    .map_err(map_err("palisade_policy"))?,
                Write::DelPolicy(k) => match self.policy.remove(&policy_key_of(k).to_lpm()) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err("palisade_policy")(e)),
                },
                Write::PutAddr(AddrKey::V4(k), id) => self
                    .addr4
                    .insert(
                        &Key::new(k.prefixlen, k.addr),
                        AddrValue { identity: *id },
                        0,
                    )
                    .map_err(map_err("palisade_addr4"))?,
                Write::PutAddr(AddrKey::V6(k), id) => self
                    .addr6
                    .insert(
                        &Key::new(k.prefixlen, k.addr),
                        AddrValue { identity: *id },
                        0,
                    )
                    .map_err(map_err("palisade_addr6"))?,
                Write::DelAddr(AddrKey::V4(k)) => {
                    match self.addr4.remove(&Key::new(k.prefixlen, k.addr)) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(e) => return Err(map_err("palisade_addr4")(e)),
                    }
                }
                Write::DelAddr(AddrKey::V6(k)) => {
                    match self.addr6.remove(&Key::new(k.prefixlen, k.addr)) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(e) => return Err(map_err("palisade_addr6")(e)),
                    }
                }
                Write::ZeroSlot(slot) => {
                    let base = *slot * abi::COUNTERS_PER_SLOT as u32;
                    for i in base..base + abi::COUNTERS_PER_SLOT as u32 {
                        let zeros =
                            PerCpuValues::try_from(vec![0u64; self.ncpus]).map_err(|io_error| {
                                map_err("palisade_counters")(MapError::SyscallError(
                                    aya::sys::SyscallError {
                                        call: "nr_cpus",
                                        io_error,
                                    },
                                ))
                            })?;
                        self.counters
                            .set(i, zeros, 0)
                            .map_err(map_err("palisade_counters"))?;
                    }
                }
                Write::PutEndpoint(i, v) => self
                    .endpoints
                    .insert(i, v, 0)
                    .map_err(map_err("palisade_endpoints"))?,
                Write::DelEndpoint(i) => match self.endpoints.remove(i) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err("palisade_endpoints")(e)),
                },
            }
        }
        Ok(())
    }

    /// Sets the runtime config (log mode, sampling, event rate limit).
    pub fn set_config(&mut self, config: Config) -> Result<()> {
        self.config
            .set(0, config, 0)
            .map_err(map_err("palisade_config"))
    }

    /// The runtime config.
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err("palisade_config"))
    }

    /// Every counter, summed over CPUs (reads only the slots in use).
    pub fn counters(&self) -> Result<Counters> {
        let read_slot = |slot: u32| -> Result<EndpointCounters> {
            let mut c = [[0u64; abi::REASON_NR]; abi::DIR_NR];
            for (d, row) in c.iter_mut().enumerate() {
                for (r, cell) in row.iter_mut().enumerate() {
                    let idx =
                        slot * abi::COUNTERS_PER_SLOT as u32 + (d * abi::REASON_NR + r) as u32;
                    let v = self
                        .counters
                        .get(&idx, 0)
                        .map_err(map_err("palisade_counters"))?;
                    *cell = v.iter().sum();
                }
            }
            Ok(c)
        };
        let mut out = Counters {
            no_endpoint: read_slot(0)?,
            ..Counters::default()
        };
        for (ifindex, v) in &self.state.endpoints {
            out.endpoints.insert(*ifindex, read_slot(v.slot)?);
        }
        for (i, s) in out.stats.iter_mut().enumerate() {
            *s = self
                .stats
                .get(&(i as u32), 0)
                .map_err(map_err("palisade_stats"))?
                .iter()
                .sum();
        }
        Ok(out)
    }

    /// Hands out the ring-buffer reader (once per process).
    pub fn events(&mut self) -> Result<EventReader> {
        self.events
            .take()
            .map(|ring| EventReader { ring })
            .ok_or(Error::EventsTaken)
    }

    fn dump_table(&self, id: TableId) -> Result<TableDump> {
        let mut entries = Vec::new();
        for kv in self.policy.iter() {
            let (k, v) = kv.map_err(map_err("palisade_policy"))?;
            let k = abi::PolicyKey::from_lpm(&k);
            if k.table == id {
                entries.push((k, v));
            }
        }
        Ok(TableDump {
            id,
            table: maps::decode_entries(entries.iter().map(|(k, v)| (k, v))),
        })
    }

    /// What the kernel enforces on one interface, decoded into policy terms
    /// (read from the maps, not from the mirror).
    pub fn dump_endpoint(&self, ifindex: u32) -> Result<EndpointDump> {
        let v = self
            .endpoints
            .get(&ifindex, 0)
            .map_err(map_err("palisade_endpoints"))?;
        Ok(EndpointDump {
            ifindex,
            pod: self
                .state
                .bindings
                .iter()
                .find(|(_, i)| **i == ifindex)
                .map(|(p, _)| p.clone()),
            ips: maps::endpoint_ips(&v),
            slot: v.slot,
            flags: v.flags,
            generation: v.generation,
            ingress: self.dump_table(v.ingress_table)?,
            egress: self.dump_table(v.egress_table)?,
        })
    }

    /// The address map as the kernel holds it.
    pub fn dump_addresses(&self) -> Result<BTreeMap<IpNet, IdentityId>> {
        let mut out = BTreeMap::new();
        for kv in self.addr4.iter() {
            let (k, v) = kv.map_err(map_err("palisade_addr4"))?;
            out.insert(
                addr_net(&AddrKey::V4(abi::Addr4Key {
                    prefixlen: k.prefix_len(),
                    addr: k.data(),
                })),
                v.identity,
            );
        }
        for kv in self.addr6.iter() {
            let (k, v) = kv.map_err(map_err("palisade_addr6"))?;
            out.insert(
                addr_net(&AddrKey::V6(abi::Addr6Key {
                    prefixlen: k.prefix_len(),
                    addr: k.data(),
                })),
                v.identity,
            );
        }
        Ok(out)
    }

    /// Endpoint entries by ifindex, as the kernel holds them.
    pub fn endpoint_entries(&self) -> BTreeMap<u32, EndpointValue> {
        self.state.endpoints.clone()
    }

    /// Entries in the policy map (prefixes).
    pub fn policy_entry_count(&self) -> usize {
        self.state.policy.len()
    }

    /// The conntrack map, for inspection and tests (e.g. ageing entries).
    pub fn conntrack(&mut self) -> &mut HashMap<MapData, CtKey, CtValue> {
        &mut self.conntrack
    }

    /// Removes every conntrack entry (of one interface, or all): flows are then
    /// judged again by policy on their next packet.
    pub fn flush_conntrack(&mut self, ifindex: Option<u32>) -> Result<usize> {
        let keys: Vec<CtKey> = self
            .conntrack
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| ifindex.is_none_or(|i| k.ifindex == i))
            .collect();
        for k in &keys {
            let _ = self.conntrack.remove(k);
        }
        Ok(keys.len())
    }

    /// Runs one program on `frame` with `BPF_PROG_TEST_RUN`, `repeat` times.
    /// Returns the program's return value and the kernel-measured mean time per
    /// run. The skb's device is the loopback (ifindex 1) of the caller's netns.
    pub fn test_run(&mut self, hook: Hook, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let name = hook.name();
        let prog = self.classifier(hook)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat.max(1);
        let r = prog.test_run(opts).map_err(prog_err(name))?;
        Ok((r.return_value, r.duration))
    }

    /// Detaches everything pinned under the root and removes all pins (uninstall).
    /// Enforcement stops on every attached interface.
    pub fn unpin_all(self) -> Result<()> {
        let root = self.root.clone();
        drop(self);
        unpin_all_at(&root)
    }
}

/// [`Datapath::unpin_all`] without a loaded datapath.
pub fn unpin_all_at(root: &Path) -> Result<()> {
    for sub in ["links", "progs", "maps"] {
        let dir = root.join(sub);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                std::fs::remove_file(e.path()).map_err(|source| Error::Pin {
                    path: e.path(),
                    source,
                })?;
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    match std::fs::remove_dir(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Pin {
            path: root.into(),
            source,
        }),
    }
}
