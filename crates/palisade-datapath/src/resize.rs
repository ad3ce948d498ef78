//! Growing a pinned map at a restart.
//!
//! The kernel fixes a map's capacity when it creates the map, and an agent that
//! adopts its pins keeps them (that is what makes a restart gap-free). So a node
//! whose cluster outgrows a map (more pods than `palisade_hosts4` holds) would
//! keep refusing every pass until a reboot, whatever the flags say. Instead, when
//! the configured size is larger than a pinned map's, the next start sets the
//! pinned map aside, lets the loader create the larger one, copies every entry
//! across and only then switches the programs to it (`upgrade_links`), so the
//! old programs keep judging with the old map until the new one is complete.
//!
//! Crash safety: the old map is pinned a second time as `<name>-grow` (bpffs refuses dots in names) before its
//! own pin is removed, and that pin is removed only after the copy. A start that
//! finds a `-grow` pin knows the previous start died mid-copy: the map under the
//! real name may be partial, so it is dropped and the `-grow` one put back.
//! A map is never shrunk (entries could be lost): a smaller size is ignored and
//! reported.

use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData, MapError, MapInfo};
use aya::Pod;

use crate::loader::{map_err, Error, MapSizes, Result};

/// Maps whose size a flag sets and that can grow: desired state (copied once;
/// the agent does not write while starting) and conntrack (copied again after
/// the switch, for flows the old programs created in between). One enum so the
/// name, the flag's size and the typed copy (`Datapath::copy_set_aside`) are
/// matched exhaustively: a map added here cannot be forgotten in either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Growable {
    Addr4,
    Addr6,
    Hosts4,
    Hosts6,
    Policy,
    PolicyParts,
    Conntrack,
}

impl Growable {
    pub(crate) const ALL: [Growable; 7] = [
        Growable::Addr4,
        Growable::Addr6,
        Growable::Hosts4,
        Growable::Hosts6,
        Growable::Policy,
        Growable::PolicyParts,
        Growable::Conntrack,
    ];

    /// The map's name in the object and under the pin directory.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Growable::Addr4 => "palisade_addr4",
            Growable::Addr6 => "palisade_addr6",
            Growable::Hosts4 => "palisade_hosts4",
            Growable::Hosts6 => "palisade_hosts6",
            Growable::Policy => "palisade_policy",
            Growable::PolicyParts => "palisade_policy_parts",
            Growable::Conntrack => "palisade_conntrack",
        }
    }

    /// The capacity the flags ask for.
    pub(crate) fn wanted(self, sizes: &MapSizes) -> u32 {
        match self {
            Growable::Addr4 => sizes.addr4,
            Growable::Addr6 => sizes.addr6,
            Growable::Hosts4 => sizes.hosts4,
            Growable::Hosts6 => sizes.hosts6,
            Growable::Policy => sizes.policy,
            Growable::PolicyParts => sizes.policy_parts,
            Growable::Conntrack => sizes.conntrack,
        }
    }
}

/// What a start did to one map's capacity (logged by the agent).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resize {
    /// Map name.
    pub map: &'static str,
    /// Capacity of the pinned map.
    pub pinned: u32,
    /// Capacity asked for.
    pub configured: u32,
    /// True if the map was grown; false if the configured size is smaller and
    /// the pinned one was kept.
    pub grown: bool,
}

/// A pinned map set aside for growing: still alive (the attached programs use
/// it), pinned only as `<name>-grow`.
pub(crate) struct SetAside {
    pub(crate) map: Growable,
    old: Map,
    grow_pin: PathBuf,
}

fn pin_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Pin {
        path: path.to_path_buf(),
        source,
    }
}

fn pin_map(data: &MapData, name: &'static str, path: &Path) -> Result<()> {
    data.pin(path).map_err(|e| {
        map_err(name)(MapError::PinError {
            name: Some(name.to_string()),
            error: e,
        })
    })
}

/// Puts back a map whose growing a previous start did not finish.
fn recover(maps_dir: &Path, name: &'static str) -> Result<()> {
    let grow_pin = maps_dir.join(format!("{name}-grow"));
    if !grow_pin.exists() {
        return Ok(());
    }
    let pin = maps_dir.join(name);
    let old = MapData::from_pin(&grow_pin).map_err(map_err(name))?;
    if pin.exists() {
        std::fs::remove_file(&pin).map_err(pin_error(&pin))?;
    }
    pin_map(&old, name, &pin)?;
    std::fs::remove_file(&grow_pin).map_err(pin_error(&grow_pin))
}

/// Before the loader runs: every growable map pinned with less than its
/// configured capacity is set aside (its real pin removed, so the loader creates
/// the configured size). Returns them and what was decided for each map whose
/// pinned size differs from the configured one.
pub(crate) fn set_aside_smaller(
    maps_dir: &Path,
    sizes: &MapSizes,
) -> Result<(Vec<SetAside>, Vec<Resize>)> {
    let mut aside = Vec::new();
    let mut report = Vec::new();
    for map in Growable::ALL {
        let name = map.name();
        recover(maps_dir, name)?;
        let pin = maps_dir.join(name);
        let Ok(info) = MapInfo::from_pin(&pin) else {
            continue;
        };
        let (pinned, configured) = (info.max_entries(), map.wanted(sizes));
        if pinned == configured {
            continue;
        }
        let grown = configured > pinned;
        report.push(Resize {
            map: name,
            pinned,
            configured,
            grown,
        });
        if !grown {
            continue;
        }
        let old = MapData::from_pin(&pin).map_err(map_err(name))?;
        let grow_pin = maps_dir.join(format!("{name}-grow"));
        pin_map(&old, name, &grow_pin)?;
        std::fs::remove_file(&pin).map_err(pin_error(&pin))?;
        aside.push(SetAside {
            map,
            old: Map::from_map_data(old).map_err(map_err(name))?,
            grow_pin,
        });
    }
    Ok((aside, report))
}

impl SetAside {
    /// The copy is complete: the old map is no longer needed once the programs
    /// have switched (the attached links keep it alive until then).
    pub(crate) fn finish(self) -> Result<()> {
        std::fs::remove_file(&self.grow_pin).map_err(pin_error(&self.grow_pin))
    }

    /// Copies every entry of the old hash map into `new`. With `catch_up`, an
    /// entry the new map already has is kept and a failed insert is ignored:
    /// the second copy of conntrack only adds the flows the old programs
    /// created during the first (a flow it misses is judged again as new).
    pub(crate) fn copy_hash<K: Pod, V: Pod>(
        &self,
        new: &mut HashMap<MapData, K, V>,
        catch_up: bool,
    ) -> Result<usize> {
        let name = self.map.name();
        let old: HashMap<&MapData, K, V> = HashMap::try_from(&self.old).map_err(map_err(name))?;
        let mut n = 0;
        for kv in old.iter() {
            let (k, v) = kv.map_err(map_err(name))?;
            if catch_up {
                const BPF_NOEXIST: u64 = 1;
                n += usize::from(new.insert(k, v, BPF_NOEXIST).is_ok());
            } else {
                new.insert(k, v, 0).map_err(map_err(name))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Copies every entry of the old LPM trie into `new`.
    pub(crate) fn copy_lpm<K: Pod, V: Pod>(
        &self,
        new: &mut LpmTrie<MapData, K, V>,
    ) -> Result<usize> {
        let name = self.map.name();
        let old: LpmTrie<&MapData, K, V> = LpmTrie::try_from(&self.old).map_err(map_err(name))?;
        let mut n = 0;
        for kv in old.iter() {
            let (k, v) = kv.map_err(map_err(name))?;
            new.insert(&k, v, 0).map_err(map_err(name))?;
            n += 1;
        }
        Ok(n)
    }
}
