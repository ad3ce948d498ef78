//! Loading, pinning, attaching, and writing state into the kernel.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
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
use palisade_policy::compiled::{Compiled, Delta};
use serde::Serialize;

use crate::abi::{
    self, AddrValue, Config, CtKey, CtValue, EndpointValue, Host6Key, PolicyMatch, PolicyPart,
    PolicyPartKey, PolicyValue,
};
use crate::maps::{is_host, AddrKey, EncodeError};
use crate::state::{part_key_of, policy_key_of, Caps, Planner, State, Write};

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
    /// IPv4 prefixes shorter than /32 in the address LPM trie.
    pub addr4: u32,
    /// IPv6 prefixes shorter than /128 in the address LPM trie.
    pub addr6: u32,
    /// IPv4 host addresses (/32: every pod) in the exact-match host map.
    pub hosts4: u32,
    /// IPv6 host addresses (/128) in the exact-match host map.
    pub hosts6: u32,
    /// Policy prefixes (after port range expansion) over all tables.
    pub policy: u32,
    /// Port partitions, one per (table, peer, protocol class) with entries:
    /// never more than `policy` (each has at least one policy entry), and the
    /// map is not preallocated, so setting it to `policy` costs nothing.
    pub policy_parts: u32,
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
            // Every pod of the cluster, not just this node's (peers are matched
            // by address): Kubernetes supports 150,000 pods per cluster. The
            // map is not preallocated, so the limit costs nothing until used.
            hosts4: 262144,
            hosts6: 262144,
            policy: 262144,
            policy_parts: 262144,
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

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn map_err(name: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map { name, source }
}

pub(crate) fn prog_err(name: &'static str) -> impl Fn(ProgramError) -> Error {
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
pub const MAP_NAMES: [&str; 20] = [
    "palisade_endpoints",
    "palisade_addr4",
    "palisade_addr6",
    "palisade_hosts4",
    "palisade_hosts6",
    "palisade_policy",
    "palisade_policy_parts",
    "palisade_conntrack",
    "palisade_frags",
    "palisade_counters",
    "palisade_stats",
    "palisade_config",
    "palisade_ratelimit",
    "palisade_pod_ratelimit",
    "palisade_events",
    "palisade_epoch",
    crate::services::FRONTENDS,
    crate::services::BACKENDS,
    crate::services::REVNAT,
    crate::services::FLOWS,
];

/// The loaded datapath: programs, pinned maps, and the userspace mirror.
///
/// Not `Sync`: one owner (the agent's datapath task) serialises all writes; map
/// contents are read by the kernel concurrently, which the write order handles.
pub struct Datapath {
    pub(crate) root: PathBuf,
    pub(crate) ebpf: Ebpf,
    pub(crate) endpoints: HashMap<MapData, u32, EndpointValue>,
    pub(crate) addr4: LpmTrie<MapData, [u8; 4], AddrValue>,
    pub(crate) addr6: LpmTrie<MapData, [u8; 16], AddrValue>,
    /// Key: the `__u32` address in network order, i.e. its octets.
    pub(crate) hosts4: HashMap<MapData, [u8; 4], AddrValue>,
    pub(crate) hosts6: HashMap<MapData, Host6Key, AddrValue>,
    pub(crate) policy: LpmTrie<MapData, PolicyMatch, PolicyValue>,
    pub(crate) policy_parts: HashMap<MapData, PolicyPartKey, PolicyPart>,
    pub(crate) conntrack: HashMap<MapData, CtKey, CtValue>,
    pub(crate) counters: PerCpuArray<MapData, u64>,
    pub(crate) stats: PerCpuArray<MapData, u64>,
    pub(crate) config: Array<MapData, Config>,
    /// `palisade_epoch[0]`: see [`Datapath::bump_epoch`].
    pub(crate) epoch: Array<MapData, u32>,
    pub(crate) pod_ratelimit: PerCpuArray<MapData, abi::PodRatelimitState>,
    pub(crate) events: Option<RingBuf<MapData>>,
    /// Service frontends and backends (`services.rs`).
    pub(crate) services: crate::services::ServiceMaps,
    pub(crate) caps: Caps,
    pub(crate) state: State,
    pub(crate) adopted: bool,
    pub(crate) resizes: Vec<crate::resize::Resize>,
    pub(crate) ncpus: usize,
    /// A plan failed half-way: policy entries may have been written without
    /// their partitions, so the next plan recomputes every partition.
    pub(crate) parts_suspect: bool,
}

/// A test's look at the kernel after one write of a plan (the write, described).
pub type AfterWrite<'a> = &'a mut dyn FnMut(&mut Datapath, &str);

fn pin_dir(root: &Path, sub: &str) -> Result<PathBuf> {
    let p = root.join(sub);
    std::fs::create_dir_all(&p).map_err(|source| Error::Pin {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}

pub(crate) fn ifname_of(ifindex: u32) -> Result<String> {
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

/// Attaches one program to one hook of an interface and pins the link under
/// `path` (TCX; a netlink clsact filter on kernels without TCX).
fn attach_one(
    prog: &mut SchedClassifier,
    hook: Hook,
    ifname: &str,
    at: TcAttachType,
    path: &Path,
) -> Result<()> {
    let name = hook.name();
    let id =
        match prog.attach_with_options(ifname, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
        {
            Ok(id) => id,
            Err(_) => {
                // Kernel < 6.6: netlink clsact filter (not pinnable; it stays until detach).
                let _ = qdisc_add_clsact(ifname);
                prog.attach_with_options(ifname, at, TcAttachOptions::Netlink(NlOptions::default()))
                    .map_err(prog_err(name))?
            }
        };
    let link = prog.take_link(id).map_err(prog_err(name))?;
    if <&FdLink>::try_from(&link).is_ok() {
        let fd = FdLink::try_from(link).map_err(|e| Error::Pin {
            path: path.into(),
            source: io::Error::other(e),
        })?;
        fd.pin(path).map_err(|e| Error::Pin {
            path: path.into(),
            source: io::Error::other(e),
        })?;
    } else {
        // A netlink filter is detached when its handle drops: keep it attached.
        std::mem::forget(link);
    }
    Ok(())
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

/// `sizeof(struct ct_value)` before it held the policy epoch.
const OLD_CT_VALUE_SIZE: usize = 32;

/// A conntrack map of the layout before `ct_value.epoch`, opened from its pin.
type OldConntrack = HashMap<MapData, CtKey, [u8; OLD_CT_VALUE_SIZE]>;

/// If the pinned conntrack map has another value size than this version's
/// (a pin of a version before `ct_value.epoch`), opens it and removes its pin
/// (bpffs cannot rename) so the loader creates the new layout; the open map
/// lives on (the old programs still use it) and `migrate_conntrack` copies it
/// over once the new map exists. A layout that is not the known older one is
/// not copied: its flows are judged as new flows.
fn set_aside_old_conntrack(maps_dir: &Path) -> Result<Option<OldConntrack>> {
    const NAME: &str = "palisade_conntrack (previous layout)";
    let pin = maps_dir.join("palisade_conntrack");
    let Ok(info) = aya::maps::MapInfo::from_pin(&pin) else {
        return Ok(None);
    };
    let size = info.value_size() as usize;
    if size == std::mem::size_of::<CtValue>() {
        return Ok(None);
    }
    let old = if size == OLD_CT_VALUE_SIZE {
        let data = MapData::from_pin(&pin).map_err(map_err(NAME))?;
        let map = aya::maps::Map::from_map_data(data).map_err(map_err(NAME))?;
        Some(HashMap::try_from(map).map_err(map_err(NAME))?)
    } else {
        None
    };
    std::fs::remove_file(&pin).map_err(|source| Error::Pin {
        path: pin.clone(),
        source,
    })?;
    Ok(old)
}

pub(crate) fn link_pin(root: &Path, ifindex: u32, hook: Hook) -> PathBuf {
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
        let old_conntrack = set_aside_old_conntrack(&maps_dir)?;
        let (aside, resizes) = crate::resize::set_aside_smaller(&maps_dir, &sizes)?;
        let slots = sizes.endpoints + 1;
        let mut loader = EbpfLoader::new();
        for name in MAP_NAMES {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        loader
            .map_max_entries("palisade_endpoints", sizes.endpoints)
            .map_max_entries("palisade_addr4", sizes.addr4)
            .map_max_entries("palisade_addr6", sizes.addr6)
            .map_max_entries("palisade_hosts4", sizes.hosts4)
            .map_max_entries("palisade_hosts6", sizes.hosts6)
            .map_max_entries("palisade_policy", sizes.policy)
            .map_max_entries("palisade_policy_parts", sizes.policy_parts)
            .map_max_entries("palisade_conntrack", sizes.conntrack)
            .map_max_entries("palisade_frags", sizes.frags)
            .map_max_entries("palisade_counters", slots * abi::COUNTERS_PER_SLOT as u32)
            .map_max_entries("palisade_pod_ratelimit", slots)
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
            hosts4: cap("palisade_hosts4")?,
            hosts6: cap("palisade_hosts6")?,
            policy: cap("palisade_policy")?,
            policy_parts: cap("palisade_policy_parts")?,
        };
        let mut dp = Datapath {
            root: pin_root.to_path_buf(),
            endpoints: take(&mut ebpf, "palisade_endpoints")?,
            addr4: take(&mut ebpf, "palisade_addr4")?,
            addr6: take(&mut ebpf, "palisade_addr6")?,
            hosts4: take(&mut ebpf, "palisade_hosts4")?,
            hosts6: take(&mut ebpf, "palisade_hosts6")?,
            policy: take(&mut ebpf, "palisade_policy")?,
            policy_parts: take(&mut ebpf, "palisade_policy_parts")?,
            conntrack: take(&mut ebpf, "palisade_conntrack")?,
            counters: take(&mut ebpf, "palisade_counters")?,
            stats: take(&mut ebpf, "palisade_stats")?,
            config: take(&mut ebpf, "palisade_config")?,
            epoch: take(&mut ebpf, "palisade_epoch")?,
            pod_ratelimit: take(&mut ebpf, "palisade_pod_ratelimit")?,
            events: Some(take(&mut ebpf, "palisade_events")?),
            services: crate::services::ServiceMaps::open(
                take(&mut ebpf, crate::services::FRONTENDS)?,
                take(&mut ebpf, crate::services::BACKENDS)?,
                take(&mut ebpf, crate::services::REVNAT)?,
                cap(crate::services::FRONTENDS)?.min(cap(crate::services::REVNAT)?),
                cap(crate::services::BACKENDS)?,
            )?,
            ebpf,
            caps,
            state: State::default(),
            adopted,
            resizes,
            parts_suspect: false,
            ncpus: aya::util::nr_cpus().map_err(|(_, e)| Error::Interface("cpus".into(), e))?,
        };
        for a in &aside {
            dp.copy_set_aside(a, false)?;
        }
        if let Some(old) = old_conntrack {
            dp.migrate_conntrack(&old);
        }
        let legacy_hosts = dp.reload_mirror()?;
        dp.repair_derived(&legacy_hosts)?;
        // Entries judged by an older program, or before this process knew the
        // maps, are judged again by the programs switched in just below.
        dp.bump_epoch()?;
        dp.upgrade_links()?;
        for a in aside {
            if a.map == crate::resize::Growable::Conntrack {
                dp.copy_set_aside(&a, true)?;
            }
            a.finish()?;
        }
        Ok(dp)
    }

    /// Maps whose pinned capacity differed from the configured one at this
    /// load: grown (entries copied before the programs switched), or kept
    /// because the configured size is smaller (a map is never shrunk).
    pub fn resizes(&self) -> &[crate::resize::Resize] {
        &self.resizes
    }

    /// Copies a set-aside map into its larger replacement (`catch_up`: the
    /// second conntrack copy, after the programs switched).
    fn copy_set_aside(&mut self, a: &crate::resize::SetAside, catch_up: bool) -> Result<usize> {
        use crate::resize::Growable;
        match a.map {
            Growable::Addr4 => a.copy_lpm(&mut self.addr4),
            Growable::Addr6 => a.copy_lpm(&mut self.addr6),
            Growable::Hosts4 => a.copy_hash(&mut self.hosts4, catch_up),
            Growable::Hosts6 => a.copy_hash(&mut self.hosts6, catch_up),
            Growable::Policy => a.copy_lpm(&mut self.policy),
            Growable::PolicyParts => a.copy_hash(&mut self.policy_parts, catch_up),
            Growable::Conntrack => a.copy_hash(&mut self.conntrack, catch_up),
        }
    }

    /// True if the maps existed before this load (restart or upgrade).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The interface `pod` is bound to in this process, if any.
    pub fn binding(&self, pod: &str) -> Option<u32> {
        self.state.bindings.get(pod).copied()
    }

    /// The pin root.
    pub fn pin_root(&self) -> &Path {
        &self.root
    }

    /// Brings the derived maps in line with adopted contents, before the new
    /// programs are switched in: host prefixes found in the LPM tries (pins of
    /// a version without host maps) move to the host maps (host map first, so
    /// the answer never changes), and every partition is recomputed from the
    /// policy entries (missing ones are written, stale ones removed).
    fn repair_derived(&mut self, legacy_hosts: &[(AddrKey, u32)]) -> Result<()> {
        for (k, id) in legacy_hosts {
            self.write(&[Write::PutAddr(*k, *id)])?;
            let gone = match k {
                AddrKey::V4(k) => self.addr4.remove(&Key::new(k.prefixlen, k.addr)),
                AddrKey::V6(k) => self.addr6.remove(&Key::new(k.prefixlen, k.addr)),
            };
            match gone {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("palisade_addr4/6")(e)),
            }
        }
        self.plan_and_write(|p| {
            p.resync_parts();
            Ok(())
        })
    }

    /// Re-reads the mirror from the kernel maps (after adoption, or if a write
    /// failed half-way). Returns the host prefixes found in the LPM tries,
    /// where this version never puts them (see `repair_derived`); the mirror
    /// lists them as if they were in the host maps.
    fn reload_mirror(&mut self) -> Result<Vec<(AddrKey, u32)>> {
        let mut legacy = Vec::new();
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
            let k = AddrKey::V4(abi::Addr4Key {
                prefixlen: k.prefix_len(),
                addr: k.data(),
            });
            if is_host(&k) {
                legacy.push((k, v.identity));
            }
            s.addrs.insert(k, v.identity);
        }
        for kv in self.addr6.iter() {
            let (k, v) = kv.map_err(map_err("palisade_addr6"))?;
            let k = AddrKey::V6(abi::Addr6Key {
                prefixlen: k.prefix_len(),
                addr: k.data(),
            });
            if is_host(&k) {
                legacy.push((k, v.identity));
            }
            s.addrs.insert(k, v.identity);
        }
        for kv in self.hosts4.iter() {
            let (k, v) = kv.map_err(map_err("palisade_hosts4"))?;
            s.addrs.insert(
                AddrKey::V4(abi::Addr4Key {
                    prefixlen: 32,
                    addr: k,
                }),
                v.identity,
            );
        }
        for kv in self.hosts6.iter() {
            let (k, v) = kv.map_err(map_err("palisade_hosts6"))?;
            s.addrs.insert(
                AddrKey::V6(abi::Addr6Key {
                    prefixlen: 128,
                    addr: k.addr,
                }),
                v.identity,
            );
        }
        for kv in self.policy_parts.iter() {
            let (k, v) = kv.map_err(map_err("palisade_policy_parts"))?;
            s.parts.insert((k.table, k.peer, k.proto), v);
        }
        for kv in self.endpoints.iter() {
            let (k, v) = kv.map_err(map_err("palisade_endpoints"))?;
            s.endpoints.insert(k, v);
        }
        self.state = s;
        Ok(legacy)
    }

    pub(crate) fn classifier(&mut self, hook: Hook) -> Result<&mut SchedClassifier> {
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

    /// Points the pinned link at `path` to this process's program for `hook`. A link
    /// whose interface was deleted (its pod went away while no agent ran, so nobody
    /// unpinned it) is severed: the kernel answers `ENOLINK`. Its pin is removed and
    /// `false` returned, so one vanished pod never stops an agent from starting.
    fn replace_link(&mut self, path: &Path, hook: Hook) -> Result<bool> {
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
        let id = match prog.attach_to_link(link) {
            Ok(id) => id,
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
            {
                std::fs::remove_file(path).map_err(|source| Error::Pin {
                    path: path.into(),
                    source,
                })?;
                return Ok(false);
            }
            Err(e) => return Err(prog_err(name)(e)),
        };
        // The pin keeps the link; dropping our fd does not detach it.
        drop(prog.take_link(id).map_err(prog_err(name))?);
        Ok(true)
    }

    /// Binds `pod` to an interface without attaching programs: its endpoint
    /// entry (if the pod is known) is written now. `attach` calls this; tests
    /// driving `BPF_PROG_TEST_RUN` bind to the loopback's ifindex 1.
    ///
    /// A pod bound elsewhere before (a new sandbox) takes its entry with it: the old
    /// interface, if it still exists, then drops everything (no entry: fail closed)
    /// instead of running tables that nothing keeps up to date any more.
    pub fn bind(&mut self, pod: &str, ifindex: u32) -> Result<()> {
        let previous = self
            .state
            .bindings
            .insert(pod.to_string(), ifindex)
            .filter(|&old| old != ifindex);
        let orphan = previous.filter(|old| !self.state.bindings.values().any(|i| i == old));
        self.plan_and_write(|p| {
            if let Some(old) = orphan {
                p.del_endpoint_pub(old);
            }
            p.write_endpoint_pub(pod)
        })
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
        let mut fresh = Vec::new();
        for (hook, at) in [
            (Hook::FromPod, TcAttachType::Ingress),
            (Hook::ToPod, TcAttachType::Egress),
        ] {
            let path = link_pin(&self.root, ifindex, hook);
            // A severed pin (its interface was deleted and the index reused) is
            // removed by replace_link; the interface then gets a fresh link.
            if !(path.exists() && self.replace_link(&path, hook)?) {
                fresh.push((hook, at, path));
            }
        }
        if fresh.is_empty() {
            return Ok(ifindex);
        }
        // Each TCX attach waits for an RCU grace period in the kernel (about 10 ms
        // measured here, strace of BPF_LINK_CREATE); attaching the two hooks from two
        // threads overlaps the waits, which halves the time a new pod waits in CNI ADD.
        let mut progs: Vec<(Hook, &mut SchedClassifier)> = self
            .ebpf
            .programs_mut()
            .filter_map(|(name, p)| {
                let hook = [Hook::FromPod, Hook::ToPod]
                    .into_iter()
                    .find(|h| h.name() == name)?;
                let c: &mut SchedClassifier = p.try_into().ok()?;
                Some((hook, c))
            })
            .collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = progs
                .iter_mut()
                .filter_map(|(hook, prog)| {
                    let (_, at, path) = fresh.iter().find(|(h, ..)| h == hook)?;
                    let hook = *hook;
                    let at = *at;
                    Some(s.spawn(move || attach_one(prog, hook, ifname, at, path)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("attach thread panicked"))
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(ifindex)
    }

    /// [`Datapath::attach`] by interface index.
    pub fn attach_ifindex(&mut self, pod: &str, ifindex: u32) -> Result<u32> {
        let name = ifname_of(ifindex)?;
        self.attach(pod, &name)
    }

    /// Whether interface `ifindex`'s links are severed (the kernel deleted the
    /// interface), removing their pins if so; `true` also when none is pinned. A link
    /// that is alive is left alone and `false` returned: an interface that this
    /// namespace cannot see may live in another one (an agent started in the wrong
    /// namespace must not unpin, which would detach every pod).
    pub fn release_if_severed(&mut self, ifindex: u32) -> Result<bool> {
        for hook in [Hook::FromPod, Hook::ToPod] {
            let path = link_pin(&self.root, ifindex, hook);
            if path.exists() && self.replace_link(&path, hook)? {
                return Ok(false);
            }
        }
        Ok(true)
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

    /// Makes the Service maps hold exactly `table`'s frontends and backends
    /// (docs/semantics.md §10), each frontend switched with one write to a
    /// fully written backend list, and publishes a new policy epoch if anything
    /// changed (untranslated Service flows and flows to a new frontend are then
    /// judged again). Capacity is checked before the first write.
    pub fn sync_services(&mut self, table: &palisade_policy::services::ServiceTable) -> Result<()> {
        if self.services.sync(table)? {
            self.bump_epoch()?;
        }
        Ok(())
    }

    /// The frontends the kernel holds, decoded: (frontend, flags, backends).
    pub fn service_entries(&self) -> Vec<crate::ServiceEntry> {
        self.services
            .held()
            .map(|(k, v, b)| {
                let (addr, port) = crate::services::decode_addr(
                    k.family,
                    &abi::SvcAddr {
                        addr: k.addr,
                        port: k.port,
                        pad: 0,
                    },
                );
                crate::ServiceEntry {
                    addr,
                    port,
                    proto: k.proto,
                    id: v.id,
                    flags: v.flags,
                    backends: b
                        .iter()
                        .map(|a| crate::services::decode_addr(k.family, a))
                        .collect(),
                }
            })
            .collect()
    }

    /// The ids the kernel holds (from the mirror, which adoption reads back from the
    /// maps), for a compiler taking over: see `palisade_policy::compile::Compiler::adopting`.
    pub fn in_use(&self) -> palisade_policy::compile::InUse {
        let mut u = palisade_policy::compile::InUse::default();
        for (k, v) in &self.state.policy {
            u.max_table = u.max_table.max(k.0);
            u.max_identity = u.max_identity.max(k.1);
            u.max_rule = u.max_rule.max(v.rule_id);
        }
        for v in self.state.endpoints.values() {
            u.max_table = u.max_table.max(v.ingress_table).max(v.egress_table);
        }
        for (k, id) in &self.state.addrs {
            u.max_identity = u.max_identity.max(*id);
            u.addresses.insert(crate::maps::addr_net(k), *id);
        }
        u
    }

    /// [`Datapath::apply`], calling `after_write` after every single map write (with
    /// the write, described), for tests that check the kernel between writes (the
    /// write-by-write differential test). Capacity is checked up front as in `apply`.
    #[doc(hidden)]
    pub fn apply_stepwise(&mut self, delta: &Delta, after_write: AfterWrite<'_>) -> Result<usize> {
        self.plan_and_write_with(
            |p| {
                for op in &delta.ops {
                    p.op(op)?;
                }
                Ok(())
            },
            Some(after_write),
        )
    }

    /// Copies the kernel's endpoint entry at `from` to `to` (removes `to` when `from`
    /// has none), bypassing the mirror: lets a test run any endpoint's state through
    /// `test_run`, whose skb always comes from ifindex 1. Returns whether `from` had
    /// an entry.
    #[doc(hidden)]
    pub fn copy_endpoint_raw(&mut self, from: u32, to: u32) -> Result<bool> {
        match self.endpoints.get(&from, 0) {
            Ok(v) => {
                self.endpoints
                    .insert(to, v, 0)
                    .map_err(map_err("palisade_endpoints"))?;
                Ok(true)
            }
            Err(MapError::KeyNotFound) => {
                match self.endpoints.remove(&to) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(MapError::SyscallError(e))
                        if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(map_err("palisade_endpoints")(e)),
                }
                Ok(false)
            }
            Err(e) => Err(map_err("palisade_endpoints")(e)),
        }
    }

    /// [`Datapath::sync`], calling `after_write` after every single map write.
    #[doc(hidden)]
    pub fn sync_stepwise(
        &mut self,
        compiled: &Compiled,
        after_write: AfterWrite<'_>,
    ) -> Result<usize> {
        self.plan_and_write_with(|p| p.sync(compiled), Some(after_write))
    }

    fn plan_and_write(
        &mut self,
        f: impl FnOnce(&mut Planner<'_>) -> Result<(), EncodeError>,
    ) -> Result<()> {
        self.plan_and_write_with(f, None).map(|_| ())
    }

    /// Plans on a copy of the mirror, checks capacity, writes; returns the number of
    /// writes.
    fn plan_and_write_with(
        &mut self,
        f: impl FnOnce(&mut Planner<'_>) -> Result<(), EncodeError>,
        mut after_write: Option<AfterWrite<'_>>,
    ) -> Result<usize> {
        let mut sim = self.state.clone();
        let mut planner = Planner::new(&mut sim, self.caps);
        if self.parts_suspect {
            planner.resync_parts();
        }
        f(&mut planner)?;
        planner.flush_parts();
        // Every packet sees the state before or after the update, never a mix:
        // see `staging`.
        let planned = std::mem::take(&mut planner.plan);
        let (plan, extra) = crate::staging::stage(&self.state, planner.s, planned);
        planner.peaks.policy += extra.policy;
        planner.peaks.policy_parts += extra.parts;
        if let Some((map, needed, capacity)) = planner.overflow() {
            return Err(Error::Capacity {
                map,
                needed,
                capacity,
            });
        }
        let written = match after_write.as_mut() {
            None => self.write(&plan),
            Some(f) => plan.chunks(1).try_for_each(|w| {
                self.write(w)?;
                f(self, &format!("{:?}", w[0]));
                Ok(())
            }),
        };
        if let Err(e) = written {
            // Keep the mirror truthful, whatever got written.
            let _ = self.reload_mirror();
            self.parts_suspect = true;
            return Err(e);
        }
        self.state = sim;
        self.parts_suspect = false;
        Ok(plan.len())
    }

    /// Writes `plan` in order, then, if it touched anything a verdict depends
    /// on (endpoint, address or policy maps: everything but counter slots),
    /// publishes a new policy epoch with [`Datapath::bump_epoch`], also after a
    /// failed write (whatever landed must be judged again). Every plan goes
    /// through here, so the planner need not bump the epoch itself: one
    /// `write` per applied plan is one epoch per plan.
    fn write(&mut self, plan: &[Write]) -> Result<()> {
        let written = self.write_maps(plan);
        if !plan.iter().any(|w| !matches!(w, Write::ZeroSlot(_))) {
            return written;
        }
        let bumped = self.bump_epoch();
        // A failed write is the error to report; the bump is then best effort.
        written.and(bumped.map(|_| ()))
    }

    /// Publishes a new policy epoch (`palisade_epoch[0] + 1`, skipping 0, which
    /// marks entries never judged under one): the next packet of every tracked
    /// flow is judged again by identity and policy, exactly as a new flow, and
    /// cut if now denied (unless revocation is off, see
    /// [`Datapath::set_revoke_established`]). Call it once AFTER the last write
    /// of a batch that changes identities, addresses, tables or endpoints,
    /// never before or between its writes: a flow re-judged against a partial
    /// batch then keeps the old epoch and is judged again once this lands.
    /// `Datapath::write` calls it for every plan; a writer that bypasses
    /// `write` must call it itself. Cost: one re-judgement (identity + policy
    /// lookups and one entry write) per tracked flow with traffic, per epoch.
    pub(crate) fn bump_epoch(&mut self) -> Result<u32> {
        let next = match self.policy_epoch()?.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        self.epoch
            .set(0, next, 0)
            .map_err(map_err("palisade_epoch"))?;
        Ok(next)
    }

    /// The policy epoch in force (`palisade_epoch[0]`): the loader publishes a
    /// new one after every batch of writes that verdicts depend on.
    pub fn policy_epoch(&self) -> Result<u32> {
        self.epoch.get(&0, 0).map_err(map_err("palisade_epoch"))
    }

    /// Whether established flows are re-judged when what judged them changes
    /// (on by default). Off sets `PALISADE_CFG_F_NO_REVOKE`: a flow allowed
    /// once then stays allowed until it ends or expires, whatever policy,
    /// label or address changes say (docs/semantics.md, "Established flows").
    /// Only that config bit is changed; flows that missed epochs while it was
    /// off are judged again when it is switched back on.
    pub fn set_revoke_established(&mut self, on: bool) -> Result<()> {
        let mut c = self.config()?;
        if on {
            c.flags &= !abi::CFG_F_NO_REVOKE;
        } else {
            c.flags |= abi::CFG_F_NO_REVOKE;
        }
        self.set_config(c)
    }

    /// See [`Datapath::set_revoke_established`].
    pub fn revoke_established(&self) -> Result<bool> {
        Ok(self.config()?.flags & abi::CFG_F_NO_REVOKE == 0)
    }

    /// Copies the entries of a conntrack map pinned by a version whose
    /// `ct_value` was shorter (the fields it had, epoch 0: judged again on
    /// their next packet) into the new map (best effort: an entry that cannot
    /// be read or written is a flow judged as new). Flows the old programs
    /// open between this copy and the link switch are judged as new flows on
    /// their next packet.
    fn migrate_conntrack(&mut self, old: &OldConntrack) {
        for kv in old.iter() {
            let Ok((k, b)) = kv else { continue };
            let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
            let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
            // The old layout is the new one's prefix; epoch 0 = never judged.
            let v = CtValue {
                created_ns: u64_at(0),
                last_seen_ns: u64_at(8),
                rule_id: u32_at(16),
                table: u32_at(20),
                identity: u32_at(24),
                state: b[28],
                origin_dir: b[29],
                tcp_fin: b[30],
                flags: 0,
                epoch: 0,
                frontend_id: 0,
            };
            let _ = self.conntrack.insert(k, v, 0);
        }
    }

    fn write_maps(&mut self, plan: &[Write]) -> Result<()> {
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
                Write::PutPart(k, v) => self
                    .policy_parts
                    .insert(part_key_of(k), v, 0)
                    .map_err(map_err("palisade_policy_parts"))?,
                Write::DelPart(k) => match self.policy_parts.remove(&part_key_of(k)) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err("palisade_policy_parts")(e)),
                },
                Write::PutAddr(k, id) => {
                    let v = AddrValue { identity: *id };
                    match (k, is_host(k)) {
                        (AddrKey::V4(k), true) => self
                            .hosts4
                            .insert(k.addr, v, 0)
                            .map_err(map_err("palisade_hosts4"))?,
                        (AddrKey::V6(k), true) => self
                            .hosts6
                            .insert(Host6Key { addr: k.addr }, v, 0)
                            .map_err(map_err("palisade_hosts6"))?,
                        (AddrKey::V4(k), false) => self
                            .addr4
                            .insert(&Key::new(k.prefixlen, k.addr), v, 0)
                            .map_err(map_err("palisade_addr4"))?,
                        (AddrKey::V6(k), false) => self
                            .addr6
                            .insert(&Key::new(k.prefixlen, k.addr), v, 0)
                            .map_err(map_err("palisade_addr6"))?,
                    }
                }
                Write::DelAddr(k) => {
                    let (name, r) = match (k, is_host(k)) {
                        (AddrKey::V4(k), true) => ("palisade_hosts4", self.hosts4.remove(&k.addr)),
                        (AddrKey::V6(k), true) => (
                            "palisade_hosts6",
                            self.hosts6.remove(&Host6Key { addr: k.addr }),
                        ),
                        (AddrKey::V4(k), false) => (
                            "palisade_addr4",
                            self.addr4.remove(&Key::new(k.prefixlen, k.addr)),
                        ),
                        (AddrKey::V6(k), false) => (
                            "palisade_addr6",
                            self.addr6.remove(&Key::new(k.prefixlen, k.addr)),
                        ),
                    };
                    match r {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(e) => return Err(map_err(name)(e)),
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
                    // A reused slot starts with a full bucket and no suppressed events.
                    let fresh =
                        PerCpuValues::try_from(vec![abi::PodRatelimitState::default(); self.ncpus])
                            .map_err(|io_error| {
                                map_err("palisade_pod_ratelimit")(MapError::SyscallError(
                                    aya::sys::SyscallError {
                                        call: "nr_cpus",
                                        io_error,
                                    },
                                ))
                            })?;
                    match self.pod_ratelimit.set(*slot, fresh, 0) {
                        // Pins of an older version may have fewer slots; not fatal.
                        Ok(()) | Err(MapError::OutOfBounds { .. }) => {}
                        Err(e) => return Err(map_err("palisade_pod_ratelimit")(e)),
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

    /// Number of possible CPUs: per-CPU maps hold one value per CPU, and the event
    /// token buckets are per CPU.
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// The runtime config.
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err("palisade_config"))
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

    /// Runs one program on `frame` once and returns its return value and the
    /// frame as the program left it (Service translation rewrites it).
    pub fn test_run_frame(&mut self, hook: Hook, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let name = hook.name();
        let prog = self.classifier(hook)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = prog.test_run(opts).map_err(prog_err(name))?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
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
