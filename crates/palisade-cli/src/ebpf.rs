//! `palisade ebpf progs|maps`: what Palisade has loaded in the kernel, read from the
//! pins under the bpffs root (so it works without the agent running).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::ProgramInfo;
use serde::Serialize;

/// One pinned program.
#[derive(Debug, Serialize)]
pub struct Prog {
    /// Pin path.
    pub pin: String,
    /// Kernel id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Tag (SHA of the instructions), hex.
    pub tag: String,
    /// Translated size in bytes.
    pub bytes_translated: Option<u32>,
    /// JIT size in bytes.
    pub bytes_jitted: u32,
    /// Instructions the verifier processed.
    pub verified_insns: Option<u32>,
    /// Map ids used.
    pub map_ids: Vec<u32>,
    /// Runs and total run time (needs `sysctl kernel.bpf_stats_enabled=1`).
    pub run_count: u64,
    /// Nanoseconds.
    pub run_time_ns: u128,
}

/// One pinned map.
#[derive(Debug, Serialize)]
pub struct Map {
    /// Pin path.
    pub pin: String,
    /// Kernel id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Type.
    pub kind: String,
    /// Key bytes.
    pub key_size: u32,
    /// Value bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
}

fn pins(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Programs and maps pinned under `root`.
pub fn inventory(root: &Path) -> anyhow::Result<(Vec<Prog>, Vec<Map>)> {
    if !root.exists() {
        anyhow::bail!(
            "nothing is pinned at {}\n\nhint: is the agent or a lab running? see --pin-root",
            root.display()
        );
    }
    let mut progs = Vec::new();
    let mut maps = Vec::new();
    for pin in pins(root) {
        let shown = pin.display().to_string();
        if let Ok(p) = ProgramInfo::from_pin(&pin) {
            progs.push(Prog {
                pin: shown,
                id: p.id(),
                name: p.name_as_str().unwrap_or("").to_string(),
                tag: format!("{:016x}", p.tag()),
                bytes_translated: p.size_translated(),
                bytes_jitted: p.size_jitted(),
                verified_insns: p.verified_instruction_count(),
                map_ids: p.map_ids().ok().flatten().unwrap_or_default(),
                run_count: p.run_count(),
                run_time_ns: p.run_time().as_nanos(),
            });
        } else if let Ok(m) = MapInfo::from_pin(&pin) {
            maps.push(Map {
                pin: shown,
                id: m.id(),
                name: m.name_as_str().unwrap_or("").to_string(),
                kind: m
                    .map_type()
                    .map(|t| format!("{t:?}"))
                    .unwrap_or_else(|_| "unknown".into()),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
            });
        }
    }
    Ok((progs, maps))
}

/// Table of programs.
pub fn render_progs(progs: &[Prog]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<16} {:<18} {:>8} {:>8} {:>10} {:>12}  PIN",
        "ID", "NAME", "TAG", "XLATED", "JITED", "VERIFIED", "RUNS"
    );
    for p in progs {
        let _ = writeln!(
            out,
            "{:<6} {:<16} {:<18} {:>8} {:>8} {:>10} {:>12}  {}",
            p.id,
            p.name,
            p.tag,
            p.bytes_translated
                .map(|b| b.to_string())
                .unwrap_or_default(),
            p.bytes_jitted,
            p.verified_insns.map(|b| b.to_string()).unwrap_or_default(),
            p.run_count,
            p.pin
        );
    }
    out
}

/// Table of maps.
pub fn render_maps(maps: &[Map]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<16} {:<16} {:>5} {:>6} {:>10}  PIN",
        "ID", "NAME", "TYPE", "KEY", "VALUE", "MAX"
    );
    for m in maps {
        let _ = writeln!(
            out,
            "{:<6} {:<16} {:<16} {:>5} {:>6} {:>10}  {}",
            m.id, m.name, m.kind, m.key_size, m.value_size, m.max_entries, m.pin
        );
    }
    out
}
